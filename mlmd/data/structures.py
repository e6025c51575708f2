"""Labelled structures read from extxyz (or any format ASE reads), with the property keys configurable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms


class DataError(ValueError):
    """Input data that cannot be used, with the file and frame named."""


@dataclass
class Structure:
    numbers: np.ndarray  # [N] int
    positions: np.ndarray  # [N, 3] Å
    cell: np.ndarray  # [3, 3] Å, rows are lattice vectors (zeros when not periodic)
    pbc: np.ndarray  # [3] bool
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # [N, 3] eV/Å
    stress: np.ndarray | None = None  # [3, 3] eV/Å^3, ASE sign convention
    charges: np.ndarray | None = None  # [N] e, reference per-atom charges
    total_charge: float = 0.0  # e (ASE atoms.info["charge"])

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def to_atoms(self) -> Atoms:
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        if self.total_charge != 0.0:
            atoms.info["charge"] = self.total_charge
        return atoms


def _lookup(atoms: Atoms, key: str, per_atom: bool):
    """A property from the frame's info/arrays, or from the results of the calculator ASE attached."""
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    if not per_atom and key in atoms.info:
        return atoms.info[key]
    calc = getattr(atoms, "calc", None)
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


# common names of the reference labels, in the order they are looked for when a key is "auto": plain ASE names
# (also the results of an attached SinglePointCalculator, which is where ASE's extxyz reader puts them), MACE's
# REF_*, and DFT_*
LABEL_CANDIDATES: dict[str, tuple[str, ...]] = {
    "energy": ("energy", "REF_energy", "DFT_energy"),
    "forces": ("forces", "REF_forces", "DFT_forces"),
    "stress": ("stress", "REF_stress", "DFT_stress"),
}
AUTO = "auto"


def _frame_keys(atoms: Atoms) -> tuple[set[str], set[str], set[str]]:
    calc = getattr(atoms, "calc", None)
    results = set(getattr(calc, "results", {}) or {}) if calc is not None else set()
    return set(atoms.info), set(atoms.arrays) - {"numbers", "positions"}, results


def keys_found(frames: list[Atoms]) -> str:
    """The property names the frames carry (info, per-atom arrays, calculator results), for error messages."""
    info: set[str] = set()
    arrays: set[str] = set()
    results: set[str] = set()
    for a in frames:
        i, r, c = _frame_keys(a)
        info |= i
        arrays |= r
        results |= c
    parts = [f"{name} [{', '.join(sorted(keys))}]" for name, keys in
             (("info", info), ("per-atom arrays", arrays), ("calculator results", results)) if keys]
    return "; ".join(parts) if parts else "no properties at all"


def _present(frames: list[Atoms], key: str, per_atom: bool) -> bool:
    return any(_lookup(a, key, per_atom) is not None for a in frames)


def resolve_label_keys(
    frames: list[Atoms], where: str, energy_key: str | None = AUTO, forces_key: str | None = AUTO,
    stress_key: str | None = AUTO,
) -> dict[str, str | None]:
    """The key each label is read from: an explicit name as given, "auto" -> the one common name the frames
    carry (None when they carry none). Several common names for one label, or an explicit energy/forces key (a
    stress key: on periodic data) that no frame carries, raise DataError naming the keys found and the setting."""
    given = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    periodic = any(bool(np.asarray(a.pbc).all()) for a in frames)
    out: dict[str, str | None] = {}
    for label, key in given.items():
        per_atom = label == "forces"
        if key is None or key == "":
            out[label] = None
        elif key == AUTO:
            hits = [c for c in LABEL_CANDIDATES[label] if _present(frames, c, per_atom)]
            if len(hits) > 1:
                raise DataError(
                    f"{where}: several {label} labels ({', '.join(hits)}): set data.{label}_key in the config "
                    f"(or --{label}-key) to the one to use"
                )
            out[label] = hits[0] if hits else None
        else:
            if not _present(frames, key, per_atom) and (label != "stress" or periodic):
                raise DataError(
                    f"{where}: no frame has the {label} label '{key}' (data.{label}_key / --{label}-key); the "
                    f"frames carry {keys_found(frames)}"
                )
            out[label] = key
    return out


def _stress_matrix(value) -> np.ndarray:
    s = np.asarray(value, dtype=float).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"stress must have 6 (Voigt) or 9 components, got {s.size}")


def structure_from_atoms(
    atoms: Atoms,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    charges_key: str = "charges",
    where: str = "",
    total_charge_key: str = "charge",
) -> Structure:
    n = len(atoms)
    pos = np.asarray(atoms.get_positions(), dtype=float)
    if n == 0:
        raise DataError(f"{where}: structure has no atoms")
    if not np.isfinite(pos).all():
        raise DataError(f"{where}: positions contain NaN or infinity")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=float)
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-6:
        raise DataError(f"{where}: periodic structure (pbc={pbc.tolist()}) has no cell (zero volume)")
    s = Structure(numbers=np.asarray(atoms.numbers, dtype=np.int64), positions=pos, cell=cell, pbc=pbc)
    e = _lookup(atoms, energy_key, per_atom=False) if energy_key else None
    if e is not None:
        try:
            if np.asarray(e).dtype.kind not in "iuf":  # T/F, text: float() would take True as 1.0
                raise ValueError(e)
            s.energy = float(e)
        except (TypeError, ValueError):
            raise DataError(f"{where}: energy '{energy_key}' is not a number: {e!r}") from None
        if not np.isfinite(s.energy):
            raise DataError(f"{where}: energy '{energy_key}' is not finite ({s.energy})")
    f = _lookup(atoms, forces_key, per_atom=True) if forces_key else None
    if f is not None:
        try:
            if np.asarray(f).dtype.kind not in "iuf":  # a logical (L) or text column
                raise ValueError(f)
            f = np.asarray(f, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"{where}: forces '{forces_key}' are not numbers") from None
        if f.shape != (n, 3):
            raise DataError(f"{where}: forces '{forces_key}' have shape {f.shape}, expected ({n}, 3)")
        if not np.isfinite(f).all():
            raise DataError(f"{where}: forces '{forces_key}' contain NaN or infinity")
        s.forces = f
    st = _lookup(atoms, stress_key, per_atom=False) if stress_key else None
    if st is not None:
        try:
            if np.asarray(st).dtype.kind not in "iuf":
                raise ValueError(f"not numbers: {st!r}")
            stress = _stress_matrix(st)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: stress '{stress_key}': {err}") from None
        if not np.isfinite(stress).all():
            raise DataError(f"{where}: stress '{stress_key}' contains NaN or infinity")
        if pbc.all():  # a stress needs a cell periodic in all three directions
            s.stress = stress
    q = _lookup(atoms, charges_key, per_atom=True)
    if q is not None:
        q = np.asarray(q, dtype=float)
        if q.size != n or not np.isfinite(q).all():
            raise DataError(f"{where}: charges '{charges_key}' must be {n} finite numbers, got shape {q.shape}")
        s.charges = q.reshape(n)
    total = _lookup(atoms, total_charge_key, per_atom=False)
    if total is not None:
        try:
            s.total_charge = float(total)
        except (TypeError, ValueError):
            raise DataError(f"{where}: total charge '{total_charge_key}' is not a number: {total!r}") from None
        if not np.isfinite(s.total_charge):
            raise DataError(f"{where}: total charge '{total_charge_key}' is not finite")
    return s


def read_structures(
    path: str | Path,
    energy_key: str | None = AUTO,
    forces_key: str | None = AUTO,
    stress_key: str | None = AUTO,
    index: str = ":",
    *,
    charges_key: str = "charges",
    total_charge_key: str = "charge",
    keys_out: dict[str, str | None] | None = None,
) -> list[Structure]:
    """Read every frame of a file; a malformed file, or a label that is not a finite number, raises DataError
    naming the file, the frame and the key.

    A label key "auto" takes the common name the file carries (energy/forces/stress as such or as the results of
    an attached calculator, REF_*, DFT_*; see resolve_label_keys); ``keys_out`` receives the keys used (None: no
    such label). Per-atom reference charges come from ``charges_key`` (extxyz column ``charge`` is read by ASE
    as the calculator's ``charges``), the total charge of a structure from ``atoms.info[total_charge_key]``
    (0 if absent).
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        frames = ase.io.read(str(path), index=index)
    except Exception as err:  # ASE raises many types for malformed input
        from mlmd.data.read_errors import locate

        where = locate(path, index, str(err))
        raise DataError(f"cannot read {path}{where}: malformed file ({type(err).__name__}: {err})") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise DataError(f"{path}: no structures found")
    keys = resolve_label_keys(frames, str(path), energy_key, forces_key, stress_key)
    if keys_out is not None:
        keys_out.update(keys)
    return [
        structure_from_atoms(
            a, keys["energy"], keys["forces"], keys["stress"], charges_key, where=f"{path} frame {k}",
            total_charge_key=total_charge_key,
        )
        for k, a in enumerate(frames)
    ]


def describe_keys(path: str | Path) -> str:
    """The property names the frames of a data file carry (for error messages)."""
    import ase.io

    return keys_found(list(ase.io.read(str(path), index=":")))


def closest_distance(atoms: Atoms) -> float:
    """The shortest distance between two atoms of a frame (Å; minimum image when periodic); inf below 2 atoms."""
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(d[np.triu_indices(len(atoms), 1)].min())


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Reproducible random split: the same n, fractions and seed give the same split on every machine."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = max(int(round(val_fraction * n)), 1 if n > 1 else 0)
    return {
        "test": sorted(order[:n_test].tolist()),
        "val": sorted(order[n_test : n_test + n_val].tolist()),
        "train": sorted(order[n_test + n_val :].tolist()),
    }
