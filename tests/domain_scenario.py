"""The out-of-domain scenario shared by workflows/test_domain.py and engines/lammps/test_lammps_domain.py: one H
atom of a water box pushed straight at its O, and the references for it from ASE alone (not mlmd.deploy.domain)."""

from __future__ import annotations

import numpy as np

from conftest import water_box

O, H = 0, 1  # water_box(2): atom 0 is an O, atom 1 one of its H (0.9572 Å)
SPEED = 0.04  # Å/fs of the H towards its O


def shortest_by_pair(atoms) -> dict[str, float]:
    """Shortest distance per element pair ("H-O" in the model's order H, O), minimum image: ASE only."""
    d = atoms.get_all_distances(mic=True)
    sym = np.array(atoms.get_chemical_symbols())
    out = {}
    for a, b in (("H", "H"), ("H", "O"), ("O", "O")):
        sel = (sym[:, None] == a) & (sym[None, :] == b) & ~np.eye(len(atoms), dtype=bool)
        out[f"{a}-{b}"] = float(d[sel].min())
    return out


TRAINING = shortest_by_pair(water_box(2))
LIMIT_HO = 0.8 * TRAINING["H-O"]


def approaching_box(repeat: int = 1):
    """The training box (repeated: the same distances and volume per atom) with H (atom 1) moving at SPEED Å/fs
    straight at its O (atom 0), the rest at rest."""
    from ase import units

    atoms = water_box(2).repeat(repeat)
    v = np.zeros((len(atoms), 3))
    u = atoms.positions[O] - atoms.positions[H]
    v[H] = SPEED * u / np.linalg.norm(u) / units.fs  # ASE velocity units: Å / (ASE time unit)
    atoms.set_velocities(v)
    return atoms


def first_step_below(frames: list[np.ndarray], cell: np.ndarray) -> int:
    """The first frame whose O-H (atoms 0, 1) distance is below the limit (from the positions, minimum image)."""
    from ase import Atoms

    for step, pos in enumerate(frames):
        a = Atoms("OH", positions=pos[[O, H]], cell=cell, pbc=True)
        if a.get_distance(0, 1, mic=True) < LIMIT_HO:
            return step
    raise AssertionError("the run never left the domain: make it longer")
