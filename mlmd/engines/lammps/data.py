"""Data files and frames: an ASE ``Atoms`` rotated into LAMMPS's lower-triangular frame and written as a
LAMMPS data file (atom_style atomic or charge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms



def lammps_frame(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation M, LAMMPS cell, positions in the LAMMPS frame) with x_lammps = x_ase @ M, M orthogonal.

    Periodic cells (pbc all True) become LAMMPS's lower-triangular form; non-periodic systems (pbc all False)
    keep their frame (M = identity) and get a box around the atoms (LAMMPS shrink-wraps it).
    """
    import numpy as np

    pbc = np.asarray(atoms.pbc, dtype=bool)
    pos = np.asarray(atoms.positions, dtype=float)
    if not pbc.any():
        # padded so that a flat or linear molecule still gets a box LAMMPS can bin (with boundary m m m the box
        # shrink-wraps to the atoms but not below this)
        lo = pos.min(0) - 3.0
        hi = pos.max(0) + 3.0
        return np.eye(3), np.diag(hi - lo), pos - lo
    if not pbc.all():
        raise ValueError(f"LAMMPS runs here need pbc all True or all False, got {pbc.tolist()}")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise ValueError("periodic system given no cell (zero volume)")
    a, b, c = cell
    lx = np.linalg.norm(a)
    ahat = a / lx
    xy = b @ ahat
    ly = np.sqrt(b @ b - xy**2)
    xz = c @ ahat
    yz = (b @ c - xy * xz) / ly
    lz = np.sqrt(c @ c - xz**2 - yz**2)
    new = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    m = np.linalg.solve(cell, new)  # cell @ M = new
    frac = atoms.cell.scaled_positions(pos) % 1.0
    frac[frac >= 1.0 - 1e-15] = 0.0
    return m, new, frac @ new


def _num(value: float) -> str:
    return repr(float(value))  # shortest text that reads back to the same double


def write_data(
    atoms: Atoms, path: str | Path, elements: Sequence[str], charges: Mapping[str, float] | None = None
) -> np.ndarray:
    """Write a LAMMPS data file (type k = elements[k-1]); returns the rotation M.

    atom_style atomic, or atom_style charge with charges {element: q} (e.g. charges_of(model_card(model))).
    """
    from ase.data import atomic_masses, atomic_numbers

    names = list(elements)
    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(names))
    if missing:
        raise ValueError(f"atoms contain {' '.join(missing)}, which has no atom type (types: {' '.join(names)})")
    m, cell, pos = lammps_frame(atoms)
    lines = [
        "LAMMPS data file written by mlmd (types: " + " ".join(names) + ")",
        "",
        f"{len(atoms)} atoms",
        f"{len(names)} atom types",
        "",
        f"0.0 {_num(cell[0, 0])} xlo xhi",
        f"0.0 {_num(cell[1, 1])} ylo yhi",
        f"0.0 {_num(cell[2, 2])} zlo zhi",
    ]
    if abs(cell[1, 0]) > 0 or abs(cell[2, 0]) > 0 or abs(cell[2, 1]) > 0:
        lines.append(f"{_num(cell[1, 0])} {_num(cell[2, 0])} {_num(cell[2, 1])} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{t} {_num(atomic_masses[atomic_numbers[n]])}  # {n}" for t, n in enumerate(names, start=1)]
    type_of = {n: t for t, n in enumerate(names, start=1)}
    if charges is None:
        lines += ["", "Atoms  # atomic", ""]
        for k, (s, p) in enumerate(zip(symbols, pos), start=1):
            lines.append(f"{k} {type_of[s]} {_num(p[0])} {_num(p[1])} {_num(p[2])}")
    else:
        lacking = sorted(set(symbols) - set(charges))
        if lacking:
            raise ValueError(f"no charge given for {' '.join(lacking)}")
        lines += ["", "Atoms  # charge", ""]
        for k, (s, p) in enumerate(zip(symbols, pos), start=1):
            lines.append(f"{k} {type_of[s]} {_num(charges[s])} {_num(p[0])} {_num(p[1])} {_num(p[2])}")
    Path(path).write_text("\n".join(lines) + "\n")
    return m
