"""Checkpoint -> one TorchScript archive with its metadata (the only place that compiles models).

Keeping compilation here means a second compiled target (torch.export / AOTInductor) can be added
without touching the models.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from e3nn.util.jit import compile as e3nn_compile

from mlmd import keys as K
from mlmd.deploy.card import TRAINING_FIELDS, CompiledCard, LongRange, ModelCard
from mlmd.deploy.checksum import same_tensor, weights_sha256
from mlmd.deploy.load import entry_points_of, load_model
from mlmd.deploy.packaged import (
    PackagedEnsemble,
    PackagedLayered,
    PackagedLayeredEnsemble,
    PackagedLayeredWithVariance,
    PackagedModel,
    PackagedWithVariance,
)
from mlmd.model.checkpoint import (
    CHECKPOINT_BEST,
    ENSEMBLE_MANIFEST,
    TEST_METRICS,
    load_checkpoint,
    load_checkpoint_model,
)
from mlmd.model.ensemble import EnsemblePotential
from mlmd.model.pair_cache import VerletPairs
from mlmd.model.potential import ShortRangePotential


def package_class(potential: torch.nn.Module) -> type:
    """The packaged wrapper for a potential: committee or not, aleatoric head or not, and whether its network
    runs layer by layer (message-passing networks; not the one-shell descriptor models)."""
    members = list(potential.members) if isinstance(potential, EnsemblePotential) else [potential]
    layered = all(hasattr(getattr(m, "network", None), "interaction_flat") for m in members)
    if isinstance(potential, EnsemblePotential):
        return PackagedLayeredEnsemble if layered else PackagedEnsemble
    if getattr(getattr(potential, "network", None), "variance_readout", None) is not None:
        return PackagedLayeredWithVariance if layered else PackagedWithVariance
    return PackagedLayered if layered else PackagedModel


def script_model(potential: torch.nn.Module, long_range: list | None = None) -> torch.jit.ScriptModule:
    potential = potential.eval()
    for net_owner in potential.members if isinstance(potential, EnsemblePotential) else [potential]:
        net_owner.network = e3nn_compile(net_owner.network)
    dtype = next(potential.parameters()).dtype
    cls = package_class(potential)
    wrapper = cls(
        potential, potential.atomic_numbers, potential.r_cut, int(potential.hparams.get("n_layers", 2)),
        [t.to(dtype) for t in (long_range or [])],
    )
    for module in wrapper.modules():  # the long-range terms' pair lists are per run: not stored in the file
        if isinstance(module, VerletPairs):
            module.clear()
    scripted = torch.jit.script(wrapper)
    # A served model is never trained: without this, TorchScript's autodiff computes the gradient of every
    # weight along with the forces (and keeps what it needs for them) at every step. Saved with the file.
    for p in scripted.parameters():
        p.requires_grad_(False)
    return scripted


def compiled_path(out: str | Path) -> Path:
    """Where `package(..., compile="aoti")` writes the compiled copy of model file `out`: model.pt -> model.aoti.pt2."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix == ".pt" else out.name) + ".aoti.pt2")


def package(
    potential: ShortRangePotential | EnsemblePotential,
    out: str | Path,
    training: Mapping[str, Any] | None = None,
    long_range: list | None = None,
    compile: str | None = None,
    compiled_to: str | Path | None = None,
    long_range_card: LongRange | None = None,
    compile_threads: int = 1,
) -> ModelCard:
    """Script the potential (plus long-range terms) and write it with its model card; returns the card.

    ``training``: what the training run records on the card (mlmd.deploy.card.TRAINING_FIELDS:
    training_data_sha256, epochs, metrics, member_metrics); everything else comes from the model itself.
    ``compile="aoti"``: also an AOTInductor copy (mlmd.deploy.compiled), at ``compiled_to`` (default
    compiled_path(out), which must be in out's folder), recorded on the card; ``compile_threads``: the threads its
    generated loops are parallelised for (1: none; run it with that many torch threads).
    ``long_range_card``: the terms' sub-cards when they are compiled already (repackage: a compiled term has no
    metadata() to ask); by default from the terms.
    """
    from mlmd.model.longrange import long_range_metadata

    dtype = str(next(potential.parameters()).dtype).replace("torch.", "")
    lr = long_range_card if long_range_card is not None else LongRange.from_json(long_range_metadata(long_range or []))
    compiled = None
    if compile is not None:
        compiled = _compile(potential, long_range, compile, Path(compiled_to or compiled_path(out)), Path(out),
                            compile_threads)
    scripted = script_model(potential, long_range)
    n_layers = int(potential.hparams.get("n_layers", 2))
    card = ModelCard(
        elements=[chemical_symbols[z] for z in potential.atomic_numbers],
        atomic_numbers=list(potential.atomic_numbers),
        r_cut=float(potential.r_cut),
        n_layers=n_layers,
        dtype=dtype,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model_kind=potential.hparams.get("kind", "equivariant"),
        n_members=int(scripted.n_members),
        long_range=lr,
        charges_mode=lr.electrostatics.mode if lr.electrostatics is not None else K.CHARGES_NONE,
        min_distance=float(scripted.min_distance),
        entry_points=entry_points_of(scripted),
        hparams=potential.hparams,
        weights_sha256=weights_sha256(scripted),
        compiled=compiled,
    ).with_training(training or {}).validate()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={K.META_FILE: card.to_json()})
    tmp.replace(out)
    return card


def _compile(potential: torch.nn.Module, long_range: list | None, kind: str, to: Path, out: Path,
             threads: int = 1) -> CompiledCard:
    """The compiled copy of the potential (compiled from a copy: script_model then scripts the original), with the
    layer-by-layer programs beside it (model.aoti.layers.pt2) for a model of several layers."""
    import copy

    from mlmd.deploy.compiled import AOTI, compile_aoti, not_compilable
    from mlmd.deploy.compiled_layers import compile_layers

    if kind != AOTI:
        raise ValueError(f"unknown compile kind {kind!r}: known {AOTI!r}")
    reason = not_compilable(potential, long_range)
    if reason:
        raise ValueError(f"cannot compile this model: {reason}")
    if to.resolve().parent != out.resolve().parent:
        raise ValueError(f"the compiled copy {to} must be in the folder of the model file {out}")
    if threads < 1:
        raise ValueError(f"compile threads must be >= 1, got {threads}")
    card = compile_aoti(copy.deepcopy(potential), to, threads=threads)
    if len(potential.network.layers) < 2:  # one layer: no features to exchange, the one-call program serves
        return card
    layers = compile_layers(copy.deepcopy(potential), to.with_name(to.name.removesuffix(".pt2") + ".layers.pt2"),
                            threads=card.threads)
    return replace(card, layers=layers)


def is_packaged_model(path: str | Path) -> bool:
    """A TorchScript archive with an mlmd model card (as opposed to a training checkpoint)."""
    import zipfile

    from mlmd.deploy.load import UNREADABLE_ZIP

    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/extra/" + K.META_FILE) for name in z.namelist())
    except UNREADABLE_ZIP:
        return False


def repackage(model: str | Path, out: str | Path, compile: str | None = None,
              training_data: Sequence[str | Path] = (), electrostatics: Mapping[str, Any] | None = None,
              compile_threads: int = 1) -> ModelCard:
    """Compile a packaged model file again with this mlmd's code: same weights (checksum), same model card.

    ``training_data``: the file(s) the model was trained on (data.path, then data.extra_train_path), for a file
    packaged without a training-domain record: the card then gets the record and the training density, as
    packaging from the checkpoint gives. Refused unless their SHA-256 is the card's training_data_sha256.

    For files packaged by an older mlmd whose compiled code is slower. The short-range potential is rebuilt
    from its hyper-parameters and given the file's weights; long-range terms are taken over as compiled, except
    D3 compiled before its graph entry (local_dispersion), which is built again from the card when that gives the
    same D3 (_long_range_of): the new file then runs its D3 inside LAMMPS's pair_style mlmd; its weights checksum
    changes (D3's buffers are renamed and its tail table added), the weights themselves do not. D3 compiled with
    the graph entry but before its split at the coordination numbers (local_dispersion_cn) is rebuilt the same
    way; its buffers keep their names, so the checksum does not change. D3 and fixed-charge Coulomb terms compiled
    before the Verlet list of their pairs (mlmd.model.pair_cache) are rebuilt from the card the same way
    (mlmd.deploy.rebuild_terms; the Coulomb term's new buffers change the checksum, no old buffer changes), and D3
    compiled before its derivatives were done by hand (mlmd.model.dispersion_two_body) likewise (same buffers), as
    is a Coulomb term differentiated by autograd (its real-space pairs and PME's mesh weights; same buffers).

    ``electrostatics``: other Ewald/PME parameters for the fixed-charge Coulomb term (a
    ``mlmd.ewald_params.choose_parameters`` dict at the card's accuracy, e.g. a real-space cutoff within the
    model's and B-spline PME); the new term must agree with the old one within the accuracy, and the card's
    electrostatics entry becomes the new parameters.
    """
    from mlmd.model.potential import potential_from_hparams

    module, card = load_model(model)
    hp = card.hparams
    if hp.get("kind") == "ensemble":
        potential = EnsemblePotential([potential_from_hparams(h) for h in hp["members"]])
    else:
        potential = potential_from_hparams(hp)
    potential = potential.to(getattr(torch, card.dtype))
    prefix = "potential."
    potential.load_state_dict(
        {k[len(prefix) :]: v for k, v in module.state_dict().items() if k.startswith(prefix)}, strict=True
    )
    long_range, renamed, replaced = _long_range_of(module, card, electrostatics)
    lr_card = card.long_range
    if replaced:
        from mlmd.model.longrange import CoulombTerm, long_range_metadata

        coulomb = [t for t in long_range if isinstance(t, CoulombTerm)]
        lr_card = replace(lr_card, electrostatics=LongRange.from_json(long_range_metadata(coulomb)).electrostatics)
    training = {key: getattr(card, key) for key in TRAINING_FIELDS}
    if training_data:
        training.update(_training_data_of(card, training_data, model))
    out = Path(out)
    tmp = out.with_name(out.name + ".repackaged")
    try:
        new = package(potential.eval(), tmp, training, long_range=long_range, long_range_card=lr_card,
                      compile=compile, compiled_to=compiled_path(out), compile_threads=compile_threads)
        # every weight and buffer of the old file, unchanged (a newer wrapper may add buffers of its own; D3
        # moved to its graph entry keeps its buffers under its new name)
        again = load_model(tmp)[0].state_dict()
        for key, value in module.state_dict().items():
            if any(key.startswith(prefix) for prefix in replaced):
                continue  # the Coulomb term given other parameters
            for old_prefix, new_prefix in renamed.items():
                if key.startswith(old_prefix):
                    key = new_prefix + key[len(old_prefix):]
            if key == "fixed_charge_table" and bool(torch.isnan(value).all()):
                continue  # files repackaged before compiled Coulomb terms gave their charges lack them (repaired)
            if key not in again or not same_tensor(again[key], value):
                raise RuntimeError(f"repackaging {model} would change {key}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return new


def _training_data_of(card: ModelCard, paths: Sequence[str | Path], model: str | Path) -> dict[str, Any]:
    """training_data_card for a packaged file's card and the files given as its training data (checked by hash)."""
    if not card.training_data_sha256:
        raise ValueError(f"{model}: its card records no training data checksum, so the files cannot be checked")
    if len(paths) > 2:
        raise ValueError("training data: the data file and at most one extra training file (data.extra_train_path)")
    st = {"config": {"data": {"path": str(paths[0]), "extra_train_path": str(paths[1]) if len(paths) > 1 else None}},
          "data_sha256": card.training_data_sha256,
          "hparams": {"atomic_numbers": list(card.atomic_numbers), "r_cut": card.r_cut}}
    found = training_data_card(st)
    if not found:
        raise ValueError(f"{', '.join(map(str, paths))}: not the files {model} was trained on (their SHA-256 differs "
                         f"from the card's training_data_sha256 {card.training_data_sha256[:12]}...)")
    return found


def _long_range_of(
    module: torch.jit.ScriptModule, card: ModelCard, electrostatics: Mapping[str, Any] | None = None
) -> tuple[list, dict[str, str], list[str]]:
    """A packaged file's long-range terms for packaging again, {old state_dict prefix: new one}, and the old
    prefixes of terms given other parameters (``electrostatics``; see repackage).

    D3 compiled by an mlmd without the graph entry (local_dispersion, for LAMMPS) is built again from the card's
    settings when that gives the same D3: every buffer of the compiled term equal and the same energies and
    forces on a water box; then it moves from long_range to dispersion. Anything else is taken over as compiled.
    """
    from mlmd.deploy.rebuild_terms import rebuilt_coulomb
    from mlmd.model.longrange import DispersionTerm

    kept: list = []
    d3: list = []
    renamed: dict[str, str] = {}
    replaced: list[str] = []
    for name, term in module.long_range.named_children():
        rebuilt = None
        if card.long_range.dispersion is not None and hasattr(term, "d3") and not hasattr(term, "graph_energies"):
            rebuilt = _rebuilt_dispersion(term, card)
        if hasattr(term, "coulomb") and hasattr(term, "charges") and (
                electrostatics is not None or not hasattr(term.coulomb, "pairs")
                or not hasattr(term.coulomb, "gradients_by_hand")):
            coulomb = rebuilt_coulomb(term, card, electrostatics)
            if coulomb is None and electrostatics is not None:
                raise ValueError("the electrostatics parameters given do not reproduce this file's Coulomb term "
                                 "within its accuracy")
            if coulomb is not None:
                renamed[f"long_range.{name}."] = f"long_range.{len(kept)}."
                if electrostatics is not None:
                    replaced.append(f"long_range.{name}.")
                kept.append(coulomb)
                continue
        if rebuilt is None:
            renamed[f"long_range.{name}."] = f"long_range.{len(kept)}."
            kept.append(term)
        else:
            renamed[f"long_range.{name}."] = f"dispersion.{len(d3)}."
            d3.append(rebuilt)
    if hasattr(module, "dispersion"):  # D3 with the graph entry already (files packaged since local_dispersion)
        for name, term in module.dispersion.named_children():
            if not hasattr(term, "graph_cn"):  # packaged before the split at the CN: the same D3, rebuilt
                rebuilt = _rebuilt_dispersion(term, card)
                if rebuilt is None:
                    raise ValueError(f"the D3 term of this file ({name}) is not what its card describes, so it "
                                     "cannot be given the entries split at the coordination numbers")
                term = rebuilt
            elif not (all(hasattr(term.d3, a) for a in ("pairs", "hand_derivatives", "graph_three_body_energies",
                                                        "graph_energies_whole_pairs_given_cn"))
                      and hasattr(term, "graph_whole_pairs_by_hand")):
                # packaged before the Verlet list, the derivatives by hand, the graph ATM entry (whose session
                # also made the graph path's pairs cheaper), the whole-pairs entry or its derivatives as values:
                # rebuilt when the same D3
                term = _rebuilt_dispersion(term, card) or term
            renamed[f"dispersion.{name}."] = f"dispersion.{len(d3)}."
            d3.append(term)
    assert all(isinstance(t, DispersionTerm) or hasattr(t, "graph_energies") for t in d3)
    return kept + d3, renamed, replaced


def _rebuilt_dispersion(compiled: torch.jit.ScriptModule, card: ModelCard):
    """DispersionTerm from the card's D3 settings if it is the compiled term's D3 (else None)."""
    from mlmd.data.generate import water_lattice
    from mlmd.model.longrange import DispersionTerm
    from mlmd.units import BOHR_TO_ANGSTROM

    d = card.long_range.dispersion
    details = d.details
    kw: dict[str, Any] = {
        "atomic_numbers": [int(z) for z in details.get("atomic_numbers", card.atomic_numbers)],
        "functional": d.functional or "pbe", "three_body": d.three_body,
        "s6": d.s6, "s8": d.s8, "a1": d.a1, "a2": d.a2, "s9": d.s9 if d.three_body else None,
        "smooth_width": d.smooth_width, "tail_correction": d.tail_correction,
    }
    for key in ("cutoff", "cutoff_cn", "cutoff_three_body"):  # the compiled term's own value (bohr) when given
        bohr = details.get(f"{key}_bohr")
        kw[key] = float(bohr) * BOHR_TO_ANGSTROM if bohr is not None else getattr(d, key, details.get(key))
    try:
        term = DispersionTerm(**kw)
    except ValueError:
        return None
    old = compiled.state_dict()
    dtype = old["d3.ref_c6"].dtype if "d3.ref_c6" in old else torch.float64
    term = term.to(dtype)
    if not d.three_body and "d3.r0_atm" in old:
        # ATM radii, unused without the three-body term (their table was corrected to the tabulated decimals
        # after mlmd 0.1): keep the file's, so that every buffer is carried over unchanged
        with torch.no_grad():
            term.d3.r0_atm.copy_(old["d3.r0_atm"])
    new = term.state_dict()
    if any(k not in new or not same_tensor(new[k], v) for k, v in old.items()):
        return None
    atoms = water_lattice(8, 6.5, np.random.default_rng(0))
    species = [z for z in card.atomic_numbers if z in (1, 8)]
    if sorted(species) != [1, 8]:  # a cell of the model's own elements instead of water
        from ase import Atoms

        rng = np.random.default_rng(0)
        zs = [card.atomic_numbers[k % len(card.atomic_numbers)] for k in range(16)]
        atoms = Atoms(zs, positions=rng.uniform(0, 7.0, (16, 3)), cell=[7.0] * 3, pbc=True)
    pos = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    args = (torch.tensor(atoms.cell.array, dtype=dtype), torch.tensor(atoms.numbers), torch.tensor(atoms.pbc))
    out = []
    for t in (compiled, term):
        e = t(pos, *args).sum()
        out.append((e.detach(), torch.autograd.grad(e, pos)[0]))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    scale = float(out[0][1].abs().max()) + 1e-30
    if abs(float(out[0][0] - out[1][0])) > tol * abs(float(out[0][0])) or \
            float((out[0][1] - out[1][1]).abs().max()) > tol * scale:
        return None
    return term


def package_checkpoint(checkpoint: str | Path, out: str | Path, compile: str | None = None,
                       compile_threads: int = 1) -> ModelCard:
    """A checkpoint file, a training folder (its best checkpoint), or an ensemble's folder (all members)."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        members = ensemble_member_checkpoints(checkpoint)
        if members:
            if compile is not None:
                raise ValueError("cannot compile this model: committees are not compiled (package without --compile)")
            return package_ensemble(members, out)
        checkpoint = checkpoint / CHECKPOINT_BEST
    st = load_checkpoint(checkpoint)
    model = load_checkpoint_model(checkpoint)
    extra: dict[str, Any] = {"training_data_sha256": st.get("data_sha256"), "epochs": int(st.get("epoch", 0))}
    extra.update(training_data_card(st))
    metrics_file = Path(checkpoint).parent / TEST_METRICS
    if metrics_file.is_file():
        extra["metrics"] = json.loads(metrics_file.read_text())
    elif st.get("history"):
        extra["metrics"] = {"val": {k[4:]: v for k, v in st["history"][-1].items() if k.startswith("val_")}}
    return package(model, out, extra, long_range=checkpoint_long_range(st), compile=compile,
                   compile_threads=compile_threads)


def ensemble_member_checkpoints(run_dir: Path) -> list[Path]:
    """The members' best checkpoints of an ensemble training folder (see mlmd.train.ensemble), or []."""
    manifest = run_dir / ENSEMBLE_MANIFEST
    if not manifest.is_file():
        return []
    info = json.loads(manifest.read_text())
    paths = [run_dir / m / CHECKPOINT_BEST for m in info["members"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"ensemble members not trained yet (no best checkpoint): {', '.join(missing)}")
    return paths


def package_ensemble(checkpoints: list[str | Path], out: str | Path) -> ModelCard:
    """Several checkpoints (same elements, cutoff and long-range terms) -> one committee model file."""
    states = [load_checkpoint(c) for c in checkpoints]
    members = [load_checkpoint_model(c) for c in checkpoints]
    lr_configs = {json.dumps(st["config"]["model"].get("long_range"), sort_keys=True) for st in states}
    charges = {json.dumps(st.get("long_range_charges", {}), sort_keys=True) for st in states}
    if len(lr_configs) > 1 or len(charges) > 1:
        raise ValueError("ensemble members were trained with different long-range terms or charges")
    extra: dict[str, Any] = {
        "training_data_sha256": states[0].get("data_sha256"),
        "epochs": [int(st.get("epoch", 0)) for st in states],
    }
    extra.update(training_data_card(states[0]))
    metrics = [Path(c).parent / TEST_METRICS for c in checkpoints]
    if all(m.is_file() for m in metrics):
        extra["member_metrics"] = [json.loads(m.read_text()) for m in metrics]
    return package(EnsemblePotential(members), out, extra, long_range=checkpoint_long_range(states[0]))


TRAINING_DENSITY_KEY = K.CARD_TRAINING_NUMBER_DENSITY  # atoms/Å^3, median over periodic training cells


def training_data_card(st: dict[str, Any]) -> dict[str, Any]:
    """What the card records of the checkpoint's training data files, read again when packaging:
    {TRAINING_DENSITY_KEY: median number density (atoms/Å^3) of the fully periodic structures (absent without
    one; `mlmd validate` builds its random boxes at this density), K.CARD_TRAINING_DOMAIN: the training domain
    (mlmd.deploy.domain: shortest distance per element pair, volume-per-atom range, largest force component)}.
    {} (keys absent, as in older cards) when a file is gone or differs from the one trained on (SHA-256)."""
    from mlmd.data.structures import read_structures
    from mlmd.deploy.domain import training_domain
    from mlmd.model.checkpoint import file_sha256

    data = (st.get("config") or {}).get("data") or {}
    paths = [p for p in (data.get("path"), data.get("extra_train_path")) if p]
    hashes = str(st.get("data_sha256") or "").split("+")
    if not paths or len(hashes) != len(paths):
        return {}
    structures = []
    for path, sha in zip(paths, hashes):
        if not Path(path).is_file() or file_sha256(path) != sha:
            return {}
        structures += read_structures(path, energy_key=data.get("energy_key", "auto"),
                                      forces_key=data.get("forces_key", "auto"),
                                      stress_key=data.get("stress_key", "auto"))
    out: dict[str, Any] = {}
    densities = [s.n_atoms / abs(np.linalg.det(s.cell)) for s in structures
                 if bool(np.all(s.pbc)) and abs(np.linalg.det(s.cell)) > 0]
    if densities:
        out[TRAINING_DENSITY_KEY] = float(f"{float(np.median(densities)):.6g}")
    hp = st.get("hparams") or {}
    if "atomic_numbers" in hp and "r_cut" in hp:
        elements = [chemical_symbols[z] for z in hp["atomic_numbers"]]
        out[K.CARD_TRAINING_DOMAIN] = training_domain(
            ((s.numbers, s.positions, s.cell, s.pbc, s.forces) for s in structures), elements, float(hp["r_cut"]))
    return out


def checkpoint_long_range(st: dict[str, Any]) -> list:
    """The long-range terms a checkpoint was trained with (charges as fitted then)."""
    from mlmd.config import long_range_config_from_dict
    from mlmd.model.longrange import build_long_range

    lr = st["config"]["model"].get("long_range")
    if not lr:
        return []
    # checkpoints written before the D3 smoothing and tail existed were trained with sharp cutoffs, no tail
    lr = {"d3_smooth_width": 0.0, "d3_tail_correction": False, **lr}
    cfg = long_range_config_from_dict(lr)
    if cfg.electrostatics in ("fixed", "predicted") and cfg.charges == "fit":
        cfg.charges = {str(z): q for z, q in st["long_range_charges"].items()}
    return build_long_range(cfg, list(st["hparams"]["atomic_numbers"]))
