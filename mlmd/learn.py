"""`mlmd learn`: active learning with a committee model.

Each round: train an ensemble on the current data, package it, measure it on the test sets (errors and how
well its uncertainty ranks them), then run MD with it from the start structures, harvest the frames whose
per-atom force spread exceeds the threshold, label up to max_frames of them with the reference method,
add them to the data, repeat. Everything is seeded: a rerun with the same configuration gives the same
frames and the same models.

Output folder: round_<r>/{data.xyz, train/ (ensemble members), model.pt, md_<k>.csv, harvest_<k>.xyz,
labelled.xyz}, learn.csv (one row per round) and learn.png.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlmd.config import ConfigError, _fill, load_config
from mlmd.data.structures import closest_distance


@dataclass
class ExploreConfig:
    structures: list = field(default_factory=list)  # extxyz files (first frame each) to start MD from
    temperatures: list = field(default_factory=lambda: [300.0])  # one run per structure and temperature
    steps: int = 400
    timestep_fs: float = 0.5
    check_every: int = 10  # steps between uncertainty checks
    threshold: float = 0.1  # eV/Å on the largest per-atom force spread
    max_threshold: float = float("inf")  # frames with a larger spread are not labelled (unphysical: collapse)
    min_distance: float = 0.0  # Å: frames with two atoms closer than this are not labelled
    max_frames: int = 10  # labelled per round (evenly spaced among the plausible frames above threshold)
    stop: bool = False  # end an MD run at its first frame above threshold


@dataclass
class LearnConfig:
    train_config: str = ""  # an `mlmd train` YAML; its data.path is replaced by each round's data
    initial_data: str = ""  # labelled extxyz to start from
    test_sets: dict = field(default_factory=dict, metadata={"raw": True})  # name -> labelled extxyz
    rounds: int = 3  # training rounds (labelling happens between them)
    ensemble: int = 3
    # gfn2 (tblite GFN2-xTB), emt (ASE's EMT; for tests), or any ASE calculator:
    # {calculator: "module:Class", kwargs: {...}} (see Reference)
    reference: Any = field(default="gfn2", metadata={"raw": True})  # str or dict
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    seed: int = 0
    output_dir: str = "runs/learn"


def load_learn_config(path: str | Path, overrides: list[str] | None = None) -> LearnConfig:
    from mlmd.config import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"learn config not found: {path}")
    values = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    cfg = _fill(LearnConfig, values, "")
    base = path.parent

    def resolve(p: str) -> str:
        return str(p if Path(p).is_absolute() else (base / p).resolve())

    cfg.train_config = resolve(cfg.train_config)
    cfg.initial_data = resolve(cfg.initial_data)
    cfg.test_sets = {k: resolve(v) for k, v in cfg.test_sets.items()}
    cfg.explore.structures = [resolve(s) for s in cfg.explore.structures]
    if cfg.rounds < 1 or cfg.ensemble < 2:
        raise ConfigError("learn needs rounds >= 1 and ensemble >= 2")
    need = needs_stress(cfg)
    check_reference(parse_reference(cfg.reference), need)
    return cfg


# ------------------------------------------------------------------------------------------ reference method


@dataclass
class Reference:
    """The method that labels harvested frames: an ASE calculator class and its keyword arguments."""

    name: str  # as the logs say it
    calculator: str  # "module:Class"
    kwargs: dict[str, Any] = field(default_factory=dict)


# the short names; gfn2 labels through mlmd.data.generate.label (tblite, frames that fail are dropped)
BUILTIN_REFERENCES: dict[str, Reference] = {
    "gfn2": Reference("gfn2", "tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
    "emt": Reference("emt", "ase.calculators.emt:EMT"),
}
REFERENCE_HELP = ("reference must be gfn2, emt, or an ASE calculator given as {calculator: \"module:Class\", "
                  "kwargs: {...}} (e.g. {calculator: \"ase.calculators.lj:LennardJones\", kwargs: {sigma: 2.3}})")


def parse_reference(value: Any) -> Reference:
    """The learn config's `reference` value (a short name or a mapping) as a Reference; ConfigError if malformed."""
    if isinstance(value, str):
        if value in BUILTIN_REFERENCES:
            return BUILTIN_REFERENCES[value]
        if ":" in value:  # the bare "module:Class" form
            return parse_reference({"calculator": value})
        raise ConfigError(f"{REFERENCE_HELP}; got {value!r}")
    if not isinstance(value, dict):
        raise ConfigError(f"{REFERENCE_HELP}; got {value!r}")
    unknown = sorted(set(value) - {"calculator", "kwargs"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in reference; known: calculator, kwargs")
    spec, kwargs = value.get("calculator"), value.get("kwargs") or {}
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"reference.calculator must look like \"module:Class\" "
                          f"(e.g. \"ase.calculators.emt:EMT\"), got {spec!r}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"reference.kwargs must be a mapping of keyword arguments, got {kwargs!r}")
    return Reference(spec, spec, dict(kwargs))


def reference_class(ref: Reference) -> type:
    """The calculator class named by ref.calculator, imported; ConfigError naming what could not be imported."""
    import importlib

    module_name, class_name = ref.calculator.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001  (ImportError, or the module failing while it is imported)
        raise ConfigError(f"reference calculator {ref.calculator}: cannot import module {module_name!r} "
                          f"({type(err).__name__}: {err}); is its package installed in this environment?") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"reference calculator {ref.calculator}: module {module_name!r} has no {class_name!r}")
    if not callable(cls):
        raise ConfigError(f"reference calculator {ref.calculator}: {class_name!r} is not a class")
    return cls


def make_calculator(ref: Reference) -> Any:
    """A new instance of the reference calculator, with its kwargs."""
    cls = reference_class(ref)
    try:
        return cls(**ref.kwargs)
    except Exception as err:  # noqa: BLE001  (a wrong keyword, a missing executable, ...)
        raise ConfigError(f"reference calculator {ref.calculator} with kwargs {ref.kwargs}: could not be "
                          f"created ({type(err).__name__}: {err})") from None


def calculator_properties(calc: Any) -> set[str]:
    return set(getattr(calc, "implemented_properties", None) or ())


def check_reference(ref: Reference, need_stress: bool) -> None:
    """Refuse, before any training, a reference that cannot be imported or created, or that cannot give the
    energies and forces (and the stress, when need_stress) the labelled frames must carry."""
    calc = make_calculator(ref)
    if not (hasattr(calc, "get_potential_energy") and hasattr(calc, "get_forces")):
        raise ConfigError(f"reference calculator {ref.calculator}: {type(calc).__name__} is not an ASE calculator "
                          "(no get_potential_energy / get_forces)")
    props = calculator_properties(calc)
    missing = [p for p in ("energy", "forces") + (("stress",) if need_stress else ()) if p not in props]
    if missing:
        why = ("; stress is needed because the explore structures are periodic and the train config's "
               "train.stress_weight > 0 (set it to 0 to train without stress)") if "stress" in missing else ""
        raise ConfigError(f"reference calculator {ref.calculator} cannot give {', '.join(missing)} (its "
                          f"implemented_properties: {sorted(props) or 'none'}){why}")


def needs_stress(cfg: LearnConfig) -> bool:
    """Labelled frames need stress when MD explores periodic cells and the training loss weighs stress."""
    import ase.io

    tc = load_config(cfg.train_config, [f"data.path={cfg.initial_data}"])
    if tc.train.stress_weight <= 0:
        return False
    for s in cfg.explore.structures:
        if not Path(s).is_file():
            raise ConfigError(f"explore structure not found: {s}")
        if bool(ase.io.read(s, 0).pbc.all()):
            return True
    return False


def label_frames(frames: list[Any], reference: Any) -> list[Any]:
    """Energy, forces (and stress for periodic cells, when the calculator gives it) from the reference method
    (a learn config's `reference` value or a Reference). A frame the calculator fails on (an SCF that does not
    converge) is dropped, said on the log; if every frame fails, the first error is raised."""
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.calculators.singlepoint import SinglePointCalculator

    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    if ref.name == "gfn2":
        from mlmd.data.generate import label

        return label(frames, "GFN2-xTB")
    calc = make_calculator(ref)
    stress_ok = "stress" in calculator_properties(calc)
    out, first_error = [], None
    for k, a in enumerate(frames):
        b = a.copy()
        b.calc = calc
        try:
            e, f = b.get_potential_energy(), b.get_forces()
            s = b.get_stress() if stress_ok and b.pbc.all() else None
        except PropertyNotImplementedError as err:
            raise ConfigError(f"reference calculator {ref.calculator} cannot give {err}") from None
        except Exception as err:  # noqa: BLE001  (one frame's failure should not stop the set)
            print(f"  frame {k}: reference {ref.name} failed ({type(err).__name__}: {err}); dropped", flush=True)
            first_error = first_error or err
            continue
        b.calc = SinglePointCalculator(b, energy=e, forces=f, stress=s)
        b.info["reference"] = ref.name
        out.append(b)
    if frames and not out:
        raise ValueError(f"reference calculator {ref.calculator} failed on all {len(frames)} frames; the first: "
                         f"{type(first_error).__name__}: {first_error}")
    return out


def select_frames(frames: list[Any], n: int) -> list[Any]:
    """n of the candidate frames, evenly spaced in harvest order (first and last included): consecutive MD
    frames are correlated, and the most uncertain ones cluster just before a run breaks down."""
    if len(frames) <= n:
        return list(frames)
    if n <= 1:
        return frames[:n]
    idx = sorted({int(round(k * (len(frames) - 1) / (n - 1))) for k in range(n)})
    return [frames[k] for k in idx]


def is_plausible(frame: Any, max_threshold: float, min_distance: float) -> bool:
    """A harvested frame worth labelling: uncertain, but not a collapsed or exploded structure, whose huge
    reference forces would dominate the next training round and which MD never needs to visit."""
    if float(frame.info["max_force_std"]) > max_threshold:
        return False
    return not (min_distance > 0 and closest_distance(frame) < min_distance)


def evaluate_round(model: Path, test_sets: dict[str, str]) -> dict[str, Any]:
    from mlmd.evaluate import evaluate_model_file

    out = {}
    for name, path in test_sets.items():
        res = evaluate_model_file(model, path)
        out[name] = {k: res[k] for k in res if k.endswith("_mae") or k.startswith("calibration") or k == "n_structures"}
    return out


def run_learn(cfg: LearnConfig, progress: bool = False, resume: bool = False) -> list[dict[str, Any]]:
    """All rounds; with resume, finished steps of an interrupted run (trained members, the packaged model,
    labelled frames) are reused, so only the remaining work is done."""
    import ase.io

    from mlmd.deploy.export import package_checkpoint
    from mlmd.md import run_md
    from mlmd.train.ensemble import train_ensemble

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_done = list(csv.DictReader(open(out / "learn.csv"))) if resume and (out / "learn.csv").is_file() else []
    (out / "learn_config.json").write_text(json.dumps(cfg.__dict__, default=lambda o: o.__dict__, indent=2))
    data = list(ase.io.read(cfg.initial_data, ":"))
    rows: list[dict[str, Any]] = []
    for r in range(cfg.rounds):
        t0 = time.time()
        rdir = out / f"round_{r}"
        rdir.mkdir(exist_ok=True)
        data_path = (rdir / "data.xyz").resolve()
        if resume and data_path.is_file():
            data = list(ase.io.read(data_path, ":"))
        else:
            ase.io.write(data_path, data, format="extxyz")
        print(f"== round {r}: training a {cfg.ensemble}-member committee on {len(data)} structures", flush=True)
        tc = load_config(cfg.train_config, [f"data.path={data_path}", f"train.seed={cfg.seed + 17 * r}"])
        tc.data.test_fraction = 0.0
        tc.output_dir = str(rdir / "train")
        tc.train.ensemble = cfg.ensemble
        train_ensemble(tc, resume=resume, progress=progress)
        model = rdir / "model.pt"
        if not (resume and model.is_file()):
            package_checkpoint(rdir / "train", model)
        row: dict[str, Any] = {"round": r, "n_structures": len(data), "n_atoms": int(sum(len(a) for a in data))}
        for name, res in evaluate_round(model, cfg.test_sets).items():
            for k, v in res.items():
                row[f"{name}_{k}"] = v
        if r < cfg.rounds - 1:
            new = explore_and_label(cfg, model, rdir, r, run_md, resume)
            row["n_harvested"] = new["n_harvested"]
            row["n_labelled"] = len(new["frames"])
            data = data + new["frames"]
        row["seconds"] = time.time() - t0
        if r < len(rows_done):  # this round finished before the interruption: keep its first timing
            row["seconds"] = float(rows_done[r]["seconds"])
        rows.append(row)
        write_table(rows, out)
        print(json.dumps(row, indent=2), flush=True)
    return rows


def explore_and_label(
    cfg: LearnConfig, model: Path, rdir: Path, r: int, run_md: Any, resume: bool = False
) -> dict[str, Any]:
    import ase.io

    done = rdir / "labelled.json"
    if resume and done.is_file():
        info = json.loads(done.read_text())
        frames = list(ase.io.read(rdir / "labelled.xyz", ":")) if info["n_labelled"] else []
        return {"n_harvested": info["n_harvested"], "frames": frames}

    ex = cfg.explore
    harvested: list[Any] = []
    k = 0
    for s in ex.structures:
        for temp in ex.temperatures:
            harvest = rdir / f"harvest_{k}.xyz"
            print(f"-- round {r}: MD {k} from {Path(s).name} at {temp} K, {ex.steps} steps", flush=True)
            try:
                run_md(
                    model, engine="ase", structure=s, steps=ex.steps, temperature=float(temp),
                    timestep_fs=ex.timestep_fs, log_every=ex.check_every, seed=cfg.seed + 1000 * r + k,
                    uncertainty={"threshold": ex.threshold, "harvest": harvest, "stop": ex.stop,
                                 "log": rdir / f"md_{k}.csv"},
                )
            except Exception as err:  # a run that stops (gate or a collapsing structure) still gave its frames
                print(f"   MD {k} ended early: {err}", flush=True)
            if harvest.is_file():
                frames = ase.io.read(harvest, ":")
                for f in frames:
                    f.info["source"] = f"round {r} md {k}"
                harvested += frames
            k += 1
    plausible = [f for f in harvested if is_plausible(f, ex.max_threshold, ex.min_distance)]
    chosen = select_frames(plausible, ex.max_frames)
    print(f"-- round {r}: {len(harvested)} frames above {ex.threshold} eV/Å, {len(plausible)} plausible "
          f"(spread <= {ex.max_threshold} eV/Å, distances >= {ex.min_distance} Å); labelling {len(chosen)} with "
          f"{parse_reference(cfg.reference).name}", flush=True)
    labelled = label_frames(chosen, cfg.reference) if chosen else []
    if labelled:
        ase.io.write(rdir / "labelled.xyz", labelled, format="extxyz")
    (rdir / "labelled.json").write_text(json.dumps({"n_harvested": len(harvested), "n_labelled": len(labelled)}))
    return {"n_harvested": len(harvested), "frames": labelled}


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(out / "learn.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for row in rows:
            w.writerow(row)
    plot_rounds(rows, out / "learn.png")


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k[: -len("_forces_mae")] for k in rows[0] if k.endswith("_forces_mae")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rounds = [row["round"] for row in rows]
    for name in names:
        axes[0].plot(rounds, [row.get(f"{name}_energy_per_atom_mae", np.nan) for row in rows], "o-", label=name)
        axes[1].plot(rounds, [row.get(f"{name}_forces_mae", np.nan) for row in rows], "o-", label=name)
    axes[0].set_ylabel("energy MAE (meV/atom)")
    axes[1].set_ylabel("force MAE (meV/Å)")
    for ax in axes:
        ax.set_xlabel("active-learning round")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
