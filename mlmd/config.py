"""One typed configuration schema. The YAML file fills it; CLI `--set key.sub=value` overrides it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class DataConfig:
    path: str = ""  # extxyz (or anything ase.io.read takes)
    # "auto": the one common name the file carries (energy/forces/stress, also as the results of an attached
    # calculator; REF_*; DFT_*), refused when there are several; or the exact name of the info key / array
    energy_key: str = "auto"
    forces_key: str = "auto"
    stress_key: str = "auto"
    charges_key: str = "charges"  # per-atom reference charges (extxyz column "charge" is read as "charges")
    total_charge_key: str = "charge"  # per-structure total charge in the frame's info (0 when absent)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    test_path: str = ""  # optional separate test file; then test_fraction is ignored
    extra_train_path: str = ""  # optional extxyz added to the training split only (e.g. active-learning frames):
    # the split of `path`, and so the validation and test sets, stay as they were


@dataclass
class BPConfig:
    """Behler-Parrinello models (model.kind bp-acsf or bp-soap); the ACSF polynomial cutoff uses model.envelope_p."""

    hidden: list = field(default_factory=lambda: [64, 64])  # hidden layer sizes of each element's network
    activation: str = "silu"  # silu or tanh
    cutoff_function: str = "polynomial"  # ACSF: polynomial (C2) or cosine (DScribe's, C1)
    n_radial: int = 16  # ACSF: generated G2 per element (ignored when g2 is given)
    n_angular: int = 4  # ACSF: generated zeta values; 4 G4 each per element pair (ignored when g4 is given)
    g2: list = field(default_factory=list)  # ACSF: explicit [[eta (1/Å²), R_s (Å)], ...]
    g4: list = field(default_factory=list)  # ACSF: explicit [[eta (1/Å²), zeta, lambda], ...]
    n_max: int = 6  # SOAP: radial functions
    l_max: int = 4  # SOAP: spherical harmonics degree
    sigma: float = 0.5  # SOAP: Gaussian width of the neighbour density (Å)
    poly_m: int = 2  # SOAP: exponent of the smooth radial weighting (1 + 2x³ - 3x²)^m
    soap_rbf: str = "gto"  # SOAP: radial basis, gto or polynomial (DScribe's conventions)


@dataclass
class LongRangeConfig:
    # none | fixed (per-species charges) | predicted (a charge head on the network, total charge conserved)
    electrostatics: str = "none"
    # "fit" (from reference charges) or {O: -0.8, H: 0.4}; for predicted: the charges the head starts from
    charges: Any = field(default="fit", metadata={"raw": True})
    accuracy: float = 1e-4  # relative RMS force accuracy of Ewald/PME (LAMMPS kspace convention)
    method: str = "auto"  # auto | ewald | pme | direct
    coulomb_cutoff: float = 0.0  # real-space cutoff in Å; 0: the default (8 Å)
    # PME mesh weights of the model's own PME: lagrange (torch-pme's) or bspline (smooth PME: the same accuracy on
    # a mesh 1.8x coarser per axis; the bundled hybrid uses it with coulomb_cutoff 6, benchmarks/SPEEDUPS.md)
    pme_assignment: str = "lagrange"
    dispersion: str = "none"  # none | d3bj
    functional: str = "gfn2"  # damping parameters of the reference method (gfn2, pbe, b3lyp, r2scan, ...)
    three_body: bool = False
    # D3 cutoffs for production MD (benchmarks/RESULTS.md, "D3(BJ) cutoffs": 7 Å with a 2 Å smooth switch-off and
    # the mean-field tail: -0.03 meV/atom against the standard cutoffs at ~18% of the short-range step)
    d3_cutoff: float = 7.0  # two-body cutoff in Å; 0: the standard 31.75 Å (sharp, no tail: simple-dftd3's)
    d3_cutoff_cn: float = 0.0  # coordination-number cutoff in Å; 0: min(d3_cutoff, 21.17 Å)
    d3_smooth_width: float = 2.0  # Å: smooth (C2) switch-off below the cutoffs; 0: sharp
    d3_tail_correction: bool = True  # mean-field two-body energy beyond the cutoff (3D-periodic cells only)


@dataclass
class ModelConfig:
    kind: str = "equivariant"  # equivariant, bp-acsf, bp-soap
    r_cut: float = 5.0
    channels: int = 32
    vector_channels: int = 16
    l_max: int = 1
    n_layers: int = 2
    n_basis: int = 8
    radial_hidden: int = 32
    envelope_p: int = 6
    dtype: str = "float32"
    variance_head: bool = False  # aleatoric: per-atom predicted variance, trained by Gaussian NLL on energies
    long_range: LongRangeConfig = field(default_factory=LongRangeConfig)
    bp: BPConfig = field(default_factory=BPConfig)


@dataclass
class TrainConfig:
    # the recipe measured on the bundled water model (inputs/water/train.yaml, benchmarks/SPEEDUPS.md): batch 1,
    # lr 0.01, weights energy 10 : forces 1 : stress 0.01
    epochs: int = 100
    batch_size: int = 1
    lr: float = 1e-2
    weight_decay: float = 0.0
    energy_weight: float = 10.0  # on energy per atom (eV/atom)^2
    forces_weight: float = 1.0  # (eV/Å)^2
    stress_weight: float = 0.01  # (eV/Å^3 * 100)^2, see loss.py
    charges_weight: float = 0.0  # e^2, on per-atom reference charges (predicted-charge electrostatics only)
    ema_decay: float = 0.99
    lr_factor: float = 0.5
    lr_patience: int = 5
    early_stopping_patience: int = 20
    min_lr: float = 1e-5
    # the largest norm of the gradient of all weights before a step (torch.nn.utils.clip_grad_norm_); 0: no limit.
    # Batch-1 training at lr 0.01 has rare batches whose gradient is far above the usual (water, train.yaml: median
    # 0.1-0.5, one batch at epoch 48 drove the epoch's median to 2.3 and undid 47 epochs); 1.0 kept that run smooth
    clip_grad_norm: float = 1.0
    seed: int = 0
    max_minutes: float = 0.0  # 0: no wall-clock limit
    threads: int = 0  # 0: leave torch's default
    variance_weight: float = 1.0  # weight of the energy NLL term (model.variance_head)
    ensemble: int = 1  # >1: train that many members (seeds seed, seed+1000, ...) for a committee model


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The allowed range of every numeric config value: (low, low included, high, high included); None: unbounded
# (but finite). tests/workflows/test_cli_checks.py checks that every int and float field of the schema is listed.
INF = None
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "data.val_fraction": (0, True, 1, False),
    "data.test_fraction": (0, True, 1, False),
    "data.split_seed": (0, True, INF, False),
    "model.r_cut": (0, False, INF, False),
    "model.channels": (1, True, INF, False),
    "model.vector_channels": (1, True, INF, False),
    "model.l_max": (0, True, INF, False),
    "model.n_layers": (1, True, INF, False),
    "model.n_basis": (1, True, INF, False),
    "model.radial_hidden": (1, True, INF, False),
    "model.envelope_p": (1, True, INF, False),
    "model.long_range.accuracy": (0, False, 1, False),
    "model.long_range.coulomb_cutoff": (0, True, INF, False),
    "model.long_range.d3_cutoff": (0, True, INF, False),
    "model.long_range.d3_cutoff_cn": (0, True, INF, False),
    "model.long_range.d3_smooth_width": (0, True, INF, False),
    "model.bp.n_radial": (1, True, INF, False),
    "model.bp.n_angular": (0, True, INF, False),
    "model.bp.n_max": (1, True, INF, False),
    "model.bp.l_max": (0, True, INF, False),
    "model.bp.sigma": (0, False, INF, False),
    "model.bp.poly_m": (1, True, INF, False),
    "train.epochs": (1, True, INF, False),
    "train.batch_size": (1, True, INF, False),
    "train.lr": (0, False, INF, False),
    "train.weight_decay": (0, True, INF, False),
    "train.energy_weight": (0, True, INF, False),
    "train.forces_weight": (0, True, INF, False),
    "train.stress_weight": (0, True, INF, False),
    "train.charges_weight": (0, True, INF, False),
    "train.ema_decay": (0, True, 1, False),
    "train.lr_factor": (0, False, 1, False),
    "train.lr_patience": (0, True, INF, False),
    "train.early_stopping_patience": (1, True, INF, False),
    "train.min_lr": (0, True, INF, False),
    "train.clip_grad_norm": (0, True, INF, False),
    "train.seed": (0, True, INF, False),
    "train.max_minutes": (0, True, INF, False),
    "train.threads": (0, True, INF, False),
    "train.variance_weight": (0, True, INF, False),
    "train.ensemble": (1, True, INF, False),
}


def describe_range(bounds: tuple[float | None, bool, float | None, bool]) -> str:
    lo, lo_in, hi, hi_in = bounds
    if hi is None:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_range(name: str, value: float) -> None:
    """ConfigError naming the key, the value and the allowed range when value is outside RANGES[name]."""
    bounds = RANGES.get(name)
    if bounds is None:
        return
    lo, lo_in, hi, hi_in = bounds
    ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value >= lo if lo_in else value > lo
    if ok and hi is not None:
        ok = value <= hi if hi_in else value < hi
    if not ok:
        raise ConfigError(f"config key '{name}' = {value!r} is out of range: must be {describe_range(bounds)}")


def _fill(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{where + key}'; known: {', '.join(sorted(fields))}")
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _fill(type(default), value, f"{where}{key}.")
        elif f.metadata.get("raw"):
            kwargs[key] = value
        else:
            kwargs[key] = _coerce(value, type(default), where + key)
            if type(default) in (int, float):
                check_range(where + key, kwargs[key])
    return cls(**kwargs)


def _coerce(value: Any, typ: type, name: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{name}' must be true or false, got {value!r}")
    if typ is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return int(value)
        except ValueError:
            pass
    if typ is str and isinstance(value, (str, int, float)):
        return str(value)
    if typ is list and isinstance(value, list):
        return list(value)
    raise ConfigError(f"config key '{name}' must be {typ.__name__}, got {value!r}")


def config_from_dict(values: dict[str, Any]) -> Config:
    cfg = _fill(Config, values or {}, "")
    dc = cfg.data
    if dc.val_fraction + (0.0 if dc.test_path else dc.test_fraction) >= 1:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {dc.val_fraction + dc.test_fraction:g} leaves no training "
            "data: their sum must be below 1"
        )
    return cfg


def long_range_config_from_dict(values: dict[str, Any]) -> LongRangeConfig:
    """The model.long_range section alone (as a checkpoint stores it), checked like a whole config."""
    return _fill(LongRangeConfig, values or {}, "model.long_range.")


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`train.epochs=5` style overrides applied to the raw mapping before validation."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = values
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    values = apply_overrides(values, overrides or [])
    cfg = config_from_dict(values)
    data_path = Path(cfg.data.path)
    if cfg.data.path and not data_path.is_absolute():
        cfg.data.path = str((path.parent / data_path).resolve())
    for key in ("test_path", "extra_train_path"):
        value = getattr(cfg.data, key)
        if value and not Path(value).is_absolute():
            setattr(cfg.data, key, str((path.parent / value).resolve()))
    if cfg.model.dtype not in ("float32", "float64"):
        raise ConfigError(f"model.dtype must be float32 or float64, got {cfg.model.dtype!r}")
    return cfg
