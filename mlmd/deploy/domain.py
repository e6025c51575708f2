"""The training domain on the model card (``training_domain``): what the training structures covered, and when
an MD configuration has left it.

A single model gives no uncertainty of its own, so the engines compare each MD configuration with the
training data instead (mlmd.engines.domain in ASE and OpenMM, ``pair_style mlmd ... domain`` and
``compute mlmd/domain`` in LAMMPS). The record holds
- ``pair_min_distance``: per element pair ("H-O": symbols in the model's species order), the shortest distance
  seen in any training structure within the cutoff (Å). A pair absent from it was never seen within r_cut, so
  its limit is taken as ``close_factor * r_cut``;
- ``volume_per_atom``: [smallest, largest] cell volume per atom of the fully periodic training structures (Å^3);
  absent without periodic data;
- ``max_force_component``: the largest |F| component of the training labels (eV/Å), for the record;
- ``n_structures``: how many structures it was taken from;
- the limits: a pair closer than ``close_factor`` times its shortest training distance, or a fully periodic
  cell whose volume per atom lies outside [``volume_factors[0]`` * smallest, ``volume_factors[1]`` * largest],
  is out of the domain. Defaults 0.8 and [0.8, 1.25]: well past thermal fluctuations of the training runs
  (a 20% shorter bond costs several eV), well before the 2x volume of a cell that has melted away from them.

No torch here (the card module reads it); ASE's neighbour list computes the record at packaging time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from mlmd.deploy.card_parts import CardError, field_error, read_number, read_object

DOMAIN_KEY = "training_domain"
CLOSE_FACTOR = 0.8
VOLUME_FACTORS = (0.8, 1.25)


def pair_key(a: str, b: str, elements: Sequence[str]) -> str:
    """"A-B" with A before B in the model's species order (one key per unordered pair)."""
    ia, ib = elements.index(a), elements.index(b)
    return f"{a}-{b}" if ia <= ib else f"{b}-{a}"


@dataclass(frozen=True)
class TrainingDomain:
    """The card's ``training_domain`` record (see the module docstring). Lengths Å, volumes Å^3, forces eV/Å."""

    pair_min_distance: dict[str, float] = field(default_factory=dict)
    volume_per_atom: Optional[tuple[float, float]] = None
    max_force_component: Optional[float] = None
    n_structures: int = 0
    close_factor: float = CLOSE_FACTOR
    volume_factors: tuple[float, float] = VOLUME_FACTORS

    # -------------------------------------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pair_min_distance": dict(self.pair_min_distance), "n_structures": self.n_structures,
                               "close_factor": self.close_factor, "volume_factors": list(self.volume_factors)}
        if self.volume_per_atom is not None:
            out["volume_per_atom"] = list(self.volume_per_atom)
        if self.max_force_component is not None:
            out["max_force_component"] = self.max_force_component
        return out

    @classmethod
    def from_json(cls, value: Any) -> TrainingDomain:
        raw = read_object(DOMAIN_KEY, value)
        name = DOMAIN_KEY + ".{}"
        pairs = {str(k): read_number(name.format(f"pair_min_distance[{k}]"), v)
                 for k, v in read_object(name.format("pair_min_distance"), raw.get("pair_min_distance", {})).items()}
        volume = raw.get("volume_per_atom")
        if volume is not None:
            volume = _read_pair(name.format("volume_per_atom"), volume)
        force = raw.get("max_force_component")
        return cls(
            pair_min_distance=pairs,
            volume_per_atom=volume,
            max_force_component=None if force is None else read_number(name.format("max_force_component"), force),
            n_structures=read_number(name.format("n_structures"), raw.get("n_structures", 0), integer=True),
            close_factor=read_number(name.format("close_factor"), raw.get("close_factor", CLOSE_FACTOR)),
            volume_factors=_read_pair(name.format("volume_factors"), raw.get("volume_factors", VOLUME_FACTORS)),
        )

    def validate(self, elements: Sequence[str], r_cut: float) -> None:
        """Every number in range and every pair key a pair of the model's elements; CardError naming the field."""
        name = DOMAIN_KEY + ".{}"
        for key, d in self.pair_min_distance.items():
            a, sep, b = key.partition("-")
            if not sep or a not in elements or b not in elements or pair_key(a, b, elements) != key:
                raise field_error(name.format("pair_min_distance"), f"{key!r} is not a pair 'A-B' of the model's "
                                                                    f"elements {list(elements)} in their order")
            if not 0 < d <= r_cut:
                raise field_error(name.format(f"pair_min_distance[{key}]"), f"{d} is not in (0, r_cut = {r_cut}]")
        if self.volume_per_atom is not None and not 0 < self.volume_per_atom[0] <= self.volume_per_atom[1]:
            raise field_error(name.format("volume_per_atom"),
                              f"{list(self.volume_per_atom)} is not [smallest, largest] > 0")
        if self.max_force_component is not None and not self.max_force_component >= 0:
            raise field_error(name.format("max_force_component"), f"must be >= 0, got {self.max_force_component}")
        if self.n_structures < 0:
            raise field_error(name.format("n_structures"), f"must be >= 0, got {self.n_structures}")
        if not 0 < self.close_factor <= 1:
            raise field_error(name.format("close_factor"), f"must be in (0, 1], got {self.close_factor}")
        lo, hi = self.volume_factors
        if not 0 < lo <= 1 <= hi:
            raise field_error(name.format("volume_factors"), f"must be [low <= 1, high >= 1] > 0, got {[lo, hi]}")

    # ------------------------------------------------------------------------------------------ limits

    def pair_limit(self, a: str, b: str, elements: Sequence[str], r_cut: float) -> float:
        """Å: a pair of these elements closer than this is out of the domain."""
        return self.close_factor * self.pair_min_distance.get(pair_key(a, b, elements), r_cut)

    def volume_limits(self) -> Optional[tuple[float, float]]:
        """Å^3 per atom: a fully periodic cell outside [low, high] is out of the domain (None: no periodic data)."""
        if self.volume_per_atom is None:
            return None
        return (self.volume_factors[0] * self.volume_per_atom[0], self.volume_factors[1] * self.volume_per_atom[1])


def _read_pair(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise field_error(name, f"expected [low, high], got {value!r}")
    return read_number(name, value[0]), read_number(name, value[1])


def training_domain(
    frames: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]],
    elements: Sequence[str],
    r_cut: float,
) -> TrainingDomain:
    """The record of training structures given as (atomic numbers, positions Å, cell Å, pbc, forces eV/Å or
    None). Pairs are searched within r_cut (minimum image and periodic images where periodic)."""
    from ase import Atoms
    from ase.data import chemical_symbols
    from ase.neighborlist import neighbor_list

    closest: dict[str, float] = {}
    volumes: list[float] = []
    fmax: Optional[float] = None
    n = 0
    for numbers, positions, cell, pbc, forces in frames:
        n += 1
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        symbols = [chemical_symbols[z] for z in atoms.numbers]
        unknown = sorted(set(symbols) - set(elements))
        if unknown:
            raise CardError(f"training structure {n - 1} has elements {unknown} the model does not know")
        i, j, d = neighbor_list("ijd", atoms, r_cut, self_interaction=False)
        if len(d):
            z_i, z_j = atoms.numbers[i], atoms.numbers[j]
            for za in np.unique(z_i):
                for zb in np.unique(z_j):
                    sel = (z_i == za) & (z_j == zb)
                    if sel.any():
                        key = pair_key(chemical_symbols[za], chemical_symbols[zb], elements)
                        closest[key] = min(closest.get(key, math.inf), float(d[sel].min()))
        if bool(np.all(pbc)) and atoms.cell.volume > 0:
            volumes.append(float(atoms.cell.volume) / len(atoms))
        if forces is not None and len(forces):
            fmax = max(fmax or 0.0, float(np.abs(forces).max()))
    return TrainingDomain(
        pair_min_distance={k: float(f"{v:.6g}") for k, v in sorted(closest.items())},
        volume_per_atom=(float(f"{min(volumes):.6g}"), float(f"{max(volumes):.6g}")) if volumes else None,
        max_force_component=None if fmax is None else float(f"{fmax:.6g}"),
        n_structures=n,
    )


def domain_from_card_value(value: Any) -> Optional[TrainingDomain]:
    """None for a card without the record (older files): engines then give no signal."""
    if value is None:
        return None
    if isinstance(value, TrainingDomain):
        return value
    if not isinstance(value, Mapping):
        raise field_error(DOMAIN_KEY, f"expected a JSON object, got {value!r}")
    return TrainingDomain.from_json(value)
