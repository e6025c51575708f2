"""Loading a packaged model with checks: readable archive, known format, valid card, intact weights."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmd import MODEL_FORMAT_VERSION, __version__
from mlmd import keys as K
from mlmd.deploy.card import CardError, ModelCard
from mlmd.keys import CHECKPOINT_BEST, CHECKPOINT_LAST, ENSEMBLE_MANIFEST

if TYPE_CHECKING:  # torch is imported by load_model only: reading a card (mlmd md/lammps-input) stays light
    import torch


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


def entry_points_of(module: torch.jit.ScriptModule) -> list[str]:
    """The known entry points (mlmd.keys.ENTRY_POINTS) a scripted model provides: what export writes on the card,
    and what the loader takes for an older card that lacks the list."""
    return [name for name in K.ENTRY_POINTS if hasattr(module, name)]
# what zipfile raises on a damaged archive (a name that is not UTF-8 while the archive says it is: UnicodeDecodeError)
UNREADABLE_ZIP = (OSError, zipfile.BadZipFile, UnicodeDecodeError, EOFError)


def training_checkpoint_message(path: str | Path) -> str | None:
    """What to say when a training checkpoint (torch.save archive: data.pkl, no TorchScript constants.pkl) or a
    training output folder is given where a packaged model is expected; None for anything else."""
    import shlex

    path = Path(path)
    if path.is_dir():
        if not any((path / n).is_file() for n in (CHECKPOINT_BEST, CHECKPOINT_LAST, ENSEMBLE_MANIFEST)):
            return None
        what = "a training output folder"
    else:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except UNREADABLE_ZIP:
            return None
        if not any(n.endswith("/data.pkl") for n in names) or any(n.endswith("/constants.pkl") for n in names):
            return None
        what = "a training checkpoint"
    return (f"{path} is {what}, not a packaged model file: package it first with "
            f"`mlmd package {shlex.quote(str(path))} -o model.pt` and give model.pt")


def _parse_card(text: str | bytes, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: model card is not valid JSON, the file is corrupt ({err})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: model card is not a JSON object, the file is corrupt")
    check_format(meta, path)
    return meta


def _typed_card(meta: dict[str, Any], path: Path, module: torch.jit.ScriptModule | None) -> ModelCard:
    """The typed, validated card; what an older card lacks and the module tells (entry points, min_distance) is
    taken from the module."""
    if module is not None:
        meta = dict(meta)
        if K.CARD_ENTRY_POINTS not in meta:
            meta[K.CARD_ENTRY_POINTS] = entry_points_of(module)
        if K.CARD_MIN_DISTANCE not in meta and hasattr(module, "min_distance"):
            meta[K.CARD_MIN_DISTANCE] = float(module.min_distance)
    try:
        return ModelCard.from_dict(meta).validate()
    except CardError as err:
        raise ModelFileError(f"{path}: invalid model card: {err}") from None


def _same_length(a: float, b: float) -> bool:  # one double through JSON: equal but for the last bits
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b))


def check_card_against_module(card: ModelCard, module: torch.jit.ScriptModule, path: Path) -> None:
    """The card against what the module itself holds (the weights checksum does not cover the card): an edited
    r_cut, n_layers, min_distance, elements, committee size, dtype, charges mode or entry point would otherwise
    set what engines build (ghost cutoffs, closest distance, species of atom types, the calls they make) with no
    error. The LAMMPS plugin makes the same checks (plugins/lammps/mlmd_model.cpp, check_card_against_module)."""

    def mismatch(name: str, card_value: object, module_value: object) -> ModelFileError:
        return ModelFileError(
            f"{path}: model card field {name!r} is {card_value} but the model itself has {module_value}: the card "
            f"was edited after packaging (or belongs to another model); refusing to load it. Repackage the model "
            f"(mlmd package CHECKPOINT -o {path.name})"
        )

    c = module._c
    numbers = list(c.getattr("atomic_numbers")) if c.hasattr("atomic_numbers") else None
    if numbers != list(card.atomic_numbers):
        raise mismatch(K.CARD_ELEMENTS, f"{card.elements} (atomic numbers {card.atomic_numbers})",
                       f"atomic_numbers {numbers}")
    r_cut = c.getattr("r_cut") if c.hasattr("r_cut") else None
    if not isinstance(r_cut, float) or not _same_length(card.r_cut, r_cut):
        raise mismatch(K.CARD_R_CUT, f"{card.r_cut} Å", f"r_cut {r_cut}")
    for key in (K.CARD_N_LAYERS, K.CARD_N_MEMBERS):
        value = c.getattr(key) if c.hasattr(key) else None
        if isinstance(value, int) and value != getattr(card, key):
            raise mismatch(key, getattr(card, key), f"{key} {value}")
    for key in (K.CARD_INTERACTION_RANGE, K.CARD_MIN_DISTANCE):
        value = c.getattr(key) if c.hasattr(key) else None
        if isinstance(value, float) and not _same_length(getattr(card, key), value):
            raise mismatch(key, f"{getattr(card, key)} Å", f"{key} {value} Å")
    weights = next((p for p in module.parameters() if p.is_floating_point()), None)
    if weights is not None and str(weights.dtype).removeprefix("torch.") != card.dtype:
        raise mismatch(K.CARD_DTYPE, repr(card.dtype), f"weights of dtype {str(weights.dtype).removeprefix('torch.')}")
    # predicted charges exactly when the module has a charge head (fixed charges are not told apart from none:
    # older files lost their module's charge table and keep them on the card)
    if c.hasattr("charge_term"):
        head = c.getattr("charge_term") is not None
        if head != card.predicts_charges:
            raise mismatch(K.CARD_CHARGES_MODE, repr(card.charges_mode),
                           "a charge head (predicted charges)" if head else "no charge head")
    # only methods the module has; fewer is what files packaged before an entry look like (engines then take their
    # older path, or refuse naming the entry)
    for name in card.entry_points:
        if not c._has_method(name):
            raise mismatch(K.CARD_ENTRY_POINTS, f"listing {name!r}", "no such method")


def read_card(path: str | Path) -> ModelCard:
    """The model card alone, from the archive's zip directory when it lists its entry points (no torch load:
    what the LAMMPS engine reads at every input it writes); older cards and unreadable files go through
    load_model (without the checksum), for the entry points or the clear error."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("/extra/" + K.META_FILE))
            meta = _parse_card(z.read(name), path)
    except (*UNREADABLE_ZIP, StopIteration):
        return load_model(path, verify=False)[1]
    if K.CARD_ENTRY_POINTS not in meta:
        return load_model(path, verify=False)[1]
    return _typed_card(meta, path, None)


def load_model(path: str | Path, verify: bool = True) -> tuple[torch.jit.ScriptModule, ModelCard]:
    """torch.jit.load the archive (no pickle from the file is executed) and check its model card."""
    import torch
    import vesin_torch  # noqa: F401  registers the neighbour-list class the archive uses

    from mlmd.deploy.checksum import weights_sha256

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
    card = _typed_card(_parse_card(extra[K.META_FILE], path), path, module)
    check_card_against_module(card, module, path)
    if verify:
        actual = weights_sha256(module)
        if actual != card.weights_sha256:
            raise ModelFileError(
                f"{path}: weights checksum mismatch (file says {str(card.weights_sha256)[:12]}..., "
                f"weights give {actual[:12]}...): the file was modified after packaging; refusing to load it"
            )
    # served models are never trained: no weight gradients beside the forces (files packaged by mlmd
    # since 0.1 say so themselves; this covers older ones)
    for p in module.parameters():
        p.requires_grad_(False)
    return module, card


def _domain_line(card: ModelCard) -> str:
    dom = card.training_domain
    if dom is None:
        return "not recorded (no out-of-domain signal in MD)"
    pairs = ", ".join(f"{k} {v:.3g}" for k, v in dom.pair_min_distance.items())
    text = f"{dom.n_structures} structures; shortest pairs (Å) {pairs or 'none within r_cut'}"
    if dom.volume_per_atom is not None:
        text += f"; volume/atom {dom.volume_per_atom[0]:.4g}-{dom.volume_per_atom[1]:.4g} Å^3"
    if dom.max_force_component is not None:
        text += f"; |F| component up to {dom.max_force_component:.3g} eV/Å"
    return text


def describe(card: ModelCard) -> str:
    """The card as `mlmd info` prints it."""
    lr = {k: (v.method if k == K.LONG_RANGE_ELECTROSTATICS else v.functional) for k, v in card.long_range.terms.items()}
    lines = [
        f"mlmd model (format {card.format_version}, packaged by mlmd {card.mlmd_version} on {card.created})",
        f"  kind            {card.model_kind}" + (f", committee of {card.n_members}" if card.is_committee else ""),
        f"  elements        {' '.join(card.elements)}",
        f"  cutoff          {card.r_cut} Å  ({card.n_layers} layers: interaction range {card.interaction_range} Å)",
        f"  dtype           {card.dtype}",
        f"  units           length {card.units.length}, energy {card.units.energy}, charge {card.units.charge}",
        f"  long range      {lr or 'none'} (charges: {card.charges_mode})",
        f"  min distance    {card.min_distance} Å",
        f"  entry points    {' '.join(card.entry_points)}",
        f"  training data   sha256 {str(card.training_data_sha256)[:16]}...",
        f"  domain          {_domain_line(card)}",
        f"  weights         sha256 {str(card.weights_sha256)[:16]}...",
    ]
    if card.compiled is not None:
        c = card.compiled
        lines.append(f"  compiled copy   {c.file} ({c.kind}, torch {c.torch_version}, sha256 {c.sha256[:16]}...)")
        if c.layers is not None:
            lines.append(f"  layer programs  {c.layers.file} (sha256 {c.layers.sha256[:16]}...)")
    hp = card.hparams
    if hp:
        lines.append("  architecture    " + ", ".join(f"{k}={v}" for k, v in hp.items() if k != "atomic_numbers"))
    for split in ("val", "test"):
        m = card.metrics.get(split)
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
