"""The parts of a model card (mlmd.deploy.card): units, the long-range sub-cards, and the typed readers of
JSON values that every part uses (a CardError names the field that is wrong)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from mlmd import keys as K
from mlmd.units import CHARGE_UNIT, ENERGY_UNIT, LENGTH_UNIT

_OLD_LENGTH_SPELLINGS = ("Å", "A", "Angstrom", "angstroms")  # sub-cards of mlmd 0.1 wrote "Å"


class CardError(ValueError):
    """A model card field with a missing, mistyped or inconsistent value (the message names the field)."""


def field_error(name: str, problem: str) -> CardError:
    return CardError(f"model card field {name!r}: {problem}")


def read_number(name: str, value: Any, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    try:
        finite = ok and math.isfinite(value)
    except OverflowError:  # an integer beyond a double (JSON digits without end)
        finite = False
    if isinstance(value, bool) or not ok or not finite:
        raise field_error(name, f"expected {'an integer' if integer else 'a finite number'}, got {value!r}")
    return int(value) if integer else float(value)


def read_optional_number(name: str, value: Any, integer: bool = False) -> Any:
    return None if value is None else read_number(name, value, integer)


def read_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise field_error(name, f"expected a JSON object, got {value!r}")
    return dict(value)


def read_units(name: str, value: Any) -> dict[str, str]:
    units = {str(k): str(v) for k, v in read_object(name, value).items()}
    if units.get("length") in _OLD_LENGTH_SPELLINGS:
        units["length"] = LENGTH_UNIT
    return units


def read_charges(name: str, value: Any) -> dict[int, float]:
    """{atomic number: charge} from JSON keys that are atomic numbers ("8") or element symbols ("O")."""
    from ase.data import atomic_numbers

    out: dict[int, float] = {}
    for key, q in read_object(name, value).items():
        key = str(key)
        if key.isascii() and key.isdigit():
            z = int(key)
        elif key in atomic_numbers:
            z = atomic_numbers[key]
        else:
            raise field_error(name, f"{key!r} is neither an atomic number nor an element symbol")
        out[z] = read_number(f"{name}[{key}]", q)
    return out


@dataclass(frozen=True)
class Units:
    """The units of every number in the card and of the entry points' inputs and outputs."""

    length: str = LENGTH_UNIT
    energy: str = ENERGY_UNIT
    charge: str = CHARGE_UNIT

    @classmethod
    def from_json(cls, value: Any) -> Units:
        units = read_units(K.CARD_UNITS, value)
        unknown = sorted(set(units) - {f.name for f in fields(cls)})
        if unknown:
            raise field_error(K.CARD_UNITS, f"unknown quantities {unknown}")
        return cls(**units)


@dataclass(frozen=True)
class ElectrostaticsCard:
    """long_range.electrostatics: Coulomb on fixed per-element or predicted charges (mlmd.model.electrostatics)."""

    mode: str  # K.CHARGES_FIXED or K.CHARGES_PREDICTED
    method: str = "auto"  # K.ELECTROSTATICS_METHODS: "auto" is Ewald/PME with a lattice, the direct sum without
    charges: dict[int, float] = field(default_factory=dict)  # e per atomic number (fixed mode)
    accuracy: float = 1e-4  # LAMMPS kspace accuracy convention (see accuracy_definition in details)
    r_cut: Optional[float] = None  # Å, real-space cutoff
    alpha: Optional[float] = None  # 1/Å, Ewald splitting
    grid_spacing: Optional[float] = None  # Å, PME mesh
    ewald_max_atoms: int = 0  # "auto" uses Ewald up to this many atoms, PME above
    units: dict[str, str] = field(default_factory=lambda: asdict(Units()))
    details: dict[str, Any] = field(default_factory=dict)  # the sub-card's other, descriptive entries

    @classmethod
    def from_json(cls, value: Any) -> ElectrostaticsCard:
        name = f"{K.CARD_LONG_RANGE}.{K.LONG_RANGE_ELECTROSTATICS}"
        raw = read_object(name, value)
        typed = {f.name for f in fields(cls)} - {"details"}
        return cls(
            mode=str(raw.get("mode", K.CHARGES_FIXED)),
            method=str(raw.get("method", "auto")).lower(),
            charges=read_charges(f"{name}.charges", raw.get("charges") or {}),
            accuracy=read_number(f"{name}.accuracy", raw.get("accuracy", 1e-4)),
            r_cut=read_optional_number(f"{name}.r_cut", raw.get("r_cut")),
            alpha=read_optional_number(f"{name}.alpha", raw.get("alpha")),
            grid_spacing=read_optional_number(f"{name}.grid_spacing", raw.get("grid_spacing")),
            ewald_max_atoms=read_number(f"{name}.ewald_max_atoms", raw.get("ewald_max_atoms", 0), integer=True),
            units=read_units(f"{name}.units", raw.get("units", asdict(Units()))),
            details={k: v for k, v in raw.items() if k not in typed},
        )

    def to_json(self) -> dict[str, Any]:
        out = {**self.details, **{k: v for k, v in asdict(self).items() if v is not None}}
        del out["details"]
        out["charges"] = {str(z): q for z, q in self.charges.items()}
        return out


@dataclass(frozen=True)
class DispersionCard:
    """long_range.dispersion: D3 with Becke-Johnson damping (mlmd.model.dispersion)."""

    kind: str = "d3bj"
    functional: str = ""
    s6: float = 1.0
    s8: float = 0.0
    a1: float = 0.0
    a2: float = 0.0  # bohr
    s9: float = 0.0  # three-body (ATM) scale; 0 without it
    three_body: bool = False
    cutoff: float = 0.0  # Å, two-body
    cutoff_cn: float = 0.0  # Å, coordination numbers
    smooth_width: float = 0.0  # Å, width of the smooth cutoff (0: sharp, as in cards written before it)
    tail_correction: bool = False  # mean-field tail beyond the cutoff (3D-periodic)
    units: dict[str, str] = field(default_factory=lambda: {"length": LENGTH_UNIT, "energy": ENERGY_UNIT})
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> DispersionCard:
        name = f"{K.CARD_LONG_RANGE}.{K.LONG_RANGE_DISPERSION}"
        raw = read_object(name, value)
        typed = {f.name for f in fields(cls)} - {"details"}
        numbers = {k: read_number(f"{name}.{k}", raw[k])
                   for k in ("s6", "s8", "a1", "a2", "s9", "cutoff", "cutoff_cn", "smooth_width") if k in raw}
        return cls(
            kind=str(raw.get("kind", "d3bj")), functional=str(raw.get("functional", "")),
            three_body=bool(raw.get("three_body", False)), tail_correction=bool(raw.get("tail_correction", False)),
            **numbers,
            units=read_units(f"{name}.units", raw.get("units", {"length": LENGTH_UNIT, "energy": ENERGY_UNIT})),
            details={k: v for k, v in raw.items() if k not in typed},
        )

    def to_json(self) -> dict[str, Any]:
        out = {**self.details, **asdict(self)}
        del out["details"]
        return out


@dataclass(frozen=True)
class LongRange:
    """The long-range terms the whole-system entry points add to the short-range energy (None: absent)."""

    electrostatics: Optional[ElectrostaticsCard] = None
    dispersion: Optional[DispersionCard] = None

    @classmethod
    def from_json(cls, value: Any) -> LongRange:
        raw = read_object(K.CARD_LONG_RANGE, value or {})
        unknown = sorted(k for k, v in raw.items() if v and k not in (K.LONG_RANGE_ELECTROSTATICS,
                                                                      K.LONG_RANGE_DISPERSION))
        if unknown:
            raise field_error(K.CARD_LONG_RANGE, f"long-range terms {unknown} are not known to this mlmd")
        elec, disp = raw.get(K.LONG_RANGE_ELECTROSTATICS), raw.get(K.LONG_RANGE_DISPERSION)
        return cls(ElectrostaticsCard.from_json(elec) if elec else None,
                   DispersionCard.from_json(disp) if disp else None)

    def to_json(self) -> dict[str, Any]:
        return {
            K.LONG_RANGE_ELECTROSTATICS: None if self.electrostatics is None else self.electrostatics.to_json(),
            K.LONG_RANGE_DISPERSION: None if self.dispersion is None else self.dispersion.to_json(),
        }

    @property
    def terms(self) -> dict[str, Any]:
        """The terms that are present, by sub-card name."""
        return {k: v for k, v in ((K.LONG_RANGE_ELECTROSTATICS, self.electrostatics),
                                  (K.LONG_RANGE_DISPERSION, self.dispersion)) if v is not None}


def _sha256_hex(name: str, value: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise field_error(name, f"not a SHA-256 hex digest: {value!r}")


@dataclass(frozen=True)
class CompiledLayersCard:
    """compiled.layers: the layer-by-layer programs (mlmd.deploy.compiled_layers) in one package beside the file,
    for engines that exchange node features between layers (LAMMPS on several ranks)."""

    file: str  # in the folder of the TorchScript file
    sha256: str  # of that file
    interface: int = 1  # the programs' names and signatures (mlmd.deploy.compiled_layers.INTERFACE)

    @classmethod
    def from_json(cls, value: Any) -> CompiledLayersCard:
        name = f"{K.CARD_COMPILED}.layers"
        raw = read_object(name, value)
        for key in ("file", "sha256"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise field_error(f"{name}.{key}", f"expected a non-empty string, got {raw.get(key)!r}")
        if "/" in raw["file"] or "\\" in raw["file"]:
            raise field_error(f"{name}.file", f"a file name in the model's folder, got {raw['file']!r}")
        _sha256_hex(f"{name}.sha256", raw["sha256"])
        return cls(file=raw["file"], sha256=raw["sha256"],
                   interface=read_number(f"{name}.interface", raw.get("interface", 1), integer=True))


@dataclass(frozen=True)
class CompiledCard:
    """compiled: a compiled copy of the short-range model beside the TorchScript file (mlmd.deploy.compiled)."""

    kind: str  # "aoti": torch.export + AOTInductor package
    file: str  # its file name, in the folder of the TorchScript file
    sha256: str  # of that file: a copy from another packaging is not used
    torch_version: str  # the torch that compiled it (AOTInductor packages run in that version only)
    threads: int = 1  # the threads its generated loops were parallelised for (1: none)
    interface: int = 1  # the compiled function's signature (mlmd.deploy.compiled.INTERFACE)
    # the layer-by-layer programs, compiled by the same torch with the same threads (None: packaged before them)
    layers: Optional[CompiledLayersCard] = None

    @classmethod
    def from_json(cls, value: Any) -> CompiledCard:
        raw = read_object(K.CARD_COMPILED, value)
        for key in ("kind", "file", "sha256", "torch_version"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise field_error(f"{K.CARD_COMPILED}.{key}", f"expected a non-empty string, got {raw.get(key)!r}")
        if "/" in raw["file"] or "\\" in raw["file"]:
            raise field_error(f"{K.CARD_COMPILED}.file", f"a file name in the model's folder, got {raw['file']!r}")
        return cls(
            kind=raw["kind"], file=raw["file"], sha256=raw["sha256"], torch_version=raw["torch_version"],
            threads=read_number(f"{K.CARD_COMPILED}.threads", raw.get("threads", 1), integer=True),
            interface=read_number(f"{K.CARD_COMPILED}.interface", raw.get("interface", 1), integer=True),
            layers=CompiledLayersCard.from_json(raw["layers"]) if raw.get("layers") else None,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.layers is None:  # cards without layer programs stay as they were written before them
            del out["layers"]
        return out
