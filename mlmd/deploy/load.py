"""Loading a packaged model with checks: readable archive, known format, intact weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mlmd import MODEL_FORMAT_VERSION, __version__
from mlmd import keys as K


class ModelFileError(RuntimeError):
    """A model file that cannot be used: missing, corrupt, tampered with or from an incompatible version."""


def unwrap_torchscript_error(err: BaseException) -> BaseException:
    """The model's own message (e.g. 'builtins.ValueError: element ... not known') without the TorchScript trace."""
    text = str(err)
    for line in reversed(text.strip().splitlines()):
        for prefix, cls in (("builtins.ValueError: ", ValueError), ("builtins.RuntimeError: ", RuntimeError)):
            if line.startswith(prefix):
                return cls(line[len(prefix) :])
    return err


def check_format(meta: dict[str, Any], path: Path) -> None:
    """The version policy: a file in this mlmd's model format loads (additions to the format, such as new entry
    points or card fields, keep its number); any other is refused, naming the mlmd that made it and what to do."""
    fmt = meta.get("format_version")
    if fmt == MODEL_FORMAT_VERSION:
        return
    made_by = meta.get("mlmd_version", "?")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ModelFileError(f"{path}: model card has no valid format_version ({fmt!r}): the file is corrupt")
    head = (f"{path} was packaged by mlmd {made_by} (model format {fmt}); this is mlmd {__version__}, which reads "
            f"model format {MODEL_FORMAT_VERSION}")
    if fmt > MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{head}. The file is newer than this mlmd: upgrade mlmd to {made_by} or later")
    raise ModelFileError(
        f"{head}. Repackage the training checkpoint with this version (mlmd package CHECKPOINT -o {path.name}), or "
        f"use mlmd {made_by} for this file"
    )


def training_checkpoint_message(path: str | Path) -> str | None:
    """What to say when a training checkpoint (torch.save archive: data.pkl, no TorchScript constants.pkl) or a
    training output folder is given where a packaged model is expected; None for anything else."""
    import shlex
    import zipfile

    path = Path(path)
    if path.is_dir():
        if not any((path / n).is_file() for n in ("checkpoint_best.pt", "checkpoint_last.pt", "ensemble.json")):
            return None
        what = "a training output folder"
    else:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile):
            return None
        if not any(n.endswith("/data.pkl") for n in names) or any(n.endswith("/constants.pkl") for n in names):
            return None
        what = "a training checkpoint"
    return (f"{path} is {what}, not a packaged model file: package it first with "
            f"`mlmd package {shlex.quote(str(path))} -o model.pt` and give model.pt")


def read_metadata(path: str | Path) -> dict[str, Any]:
    return load_model(path, verify=False)[1]


def load_model(path: str | Path, verify: bool = True) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """torch.jit.load the archive (no pickle from the file is executed) and check its model card."""
    import vesin_torch  # noqa: F401  registers the neighbour-list class the archive uses

    path = Path(path)
    hint = training_checkpoint_message(path) if path.is_dir() else None
    if hint:
        raise ModelFileError(hint)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    extra = {K.META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        hint = training_checkpoint_message(path)
        if hint:
            raise ModelFileError(hint) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"cannot read model file {path}: not a valid mlmd TorchScript archive (corrupt or truncated?): {first}"
        ) from None
    if not extra[K.META_FILE]:
        raise ModelFileError(f"{path} is a TorchScript file but not an mlmd model (no {K.META_FILE})")
    try:
        meta = json.loads(extra[K.META_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: model card is not valid JSON, the file is corrupt ({err})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: model card is not a JSON object, the file is corrupt")
    check_format(meta, path)
    if verify:
        from mlmd.deploy.export import weights_sha256

        actual = weights_sha256(module)
        if actual != meta.get("weights_sha256"):
            raise ModelFileError(
                f"{path}: weights checksum mismatch (file says {str(meta.get('weights_sha256'))[:12]}..., "
                f"weights give {actual[:12]}...): the file was modified after packaging; refusing to load it"
            )
    # served models are never trained: no weight gradients beside the forces (files packaged by mlmd
    # since 0.1 say so themselves; this covers older ones)
    for p in module.parameters():
        p.requires_grad_(False)
    return module, meta


def model_card(meta: dict[str, Any]) -> str:
    lines = [
        f"mlmd model (format {meta.get('format_version')}, packaged by mlmd {meta.get('mlmd_version')} "
        f"on {meta.get('created')})",
        f"  kind            {meta.get('model_kind')}",
        f"  elements        {' '.join(meta.get('elements', []))}",
        f"  cutoff          {meta.get('r_cut')} Å  ({meta.get('n_layers')} layers: interaction range "
        f"{meta.get('interaction_range')} Å)",
        f"  dtype           {meta.get('dtype')}",
        f"  units           {meta.get('units')}",
        f"  long range      {meta.get('long_range')}",
        f"  training data   sha256 {str(meta.get('training_data_sha256'))[:16]}...",
        f"  weights         sha256 {str(meta.get('weights_sha256'))[:16]}...",
    ]
    hp = meta.get("hparams", {})
    if hp:
        lines.append("  architecture    " + ", ".join(f"{k}={v}" for k, v in hp.items() if k != "atomic_numbers"))
    metrics = meta.get("metrics", {})
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            e = m.get("energy_per_atom_mae")
            f = m.get("forces_mae")
            s = m.get("stress_mae")
            parts = []
            if e is not None:
                parts.append(f"E MAE {e:.2f} meV/atom")
            if f is not None:
                parts.append(f"F MAE {f:.1f} meV/Å")
            if s is not None:
                parts.append(f"stress MAE {s:.2f} meV/Å³")
            lines.append(f"  {split:<15} " + ", ".join(parts))
    return "\n".join(lines)
