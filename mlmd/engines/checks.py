"""What stops an MD run, and the error that says where: the same rules in every engine.

A run stops with an :class:`MDError` naming the step and the atoms (0-based indices in ASE and OpenMM;
LAMMPS's pair style names atom IDs) when
- a position, velocity, energy or force is not finite (NaN or infinity): nothing after it means anything;
- two atoms come closer than the model's minimum distance (its card's ``min_distance``, by default
  mlmd.deploy.card.DEFAULT_MIN_DISTANCE, 0.1 Å): atoms that collapse onto
  each other are outside any training set, and the model refuses them;
- an atom moves further than the model's cutoff in one time step (``|v| dt > r_cut``): the model would see a
  neighbour for less than a step, so the integration no longer means anything (a time step far too large, or
  forces that have blown up). Thermal atoms move ~0.01 Å per fs and a 10 keV recoil ~0.3 Å per fs, so this
  bound is far from any sound run.
An atom or a cluster that leaves its neighbours ("flies apart") is *not* an error: it has the model's
free-atom energy and no force, as in evaporation or a gas; an unphysical departure shows up as one of the
conditions above. LAMMPS itself stops a non-periodic run that loses atoms through a fixed boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlmd.deploy.card import DEFAULT_MIN_DISTANCE

MAX_NAMED = 8  # atom indices listed in a message


class MDError(RuntimeError):
    """An MD run stopped because its state became broken (the message names the step and the atoms)."""


def atom_list(indices: Sequence[int] | np.ndarray) -> str:
    """'3, 7, 12 (and 5 more)'."""
    idx = sorted({int(i) for i in np.asarray(indices).ravel()})
    text = ", ".join(str(i) for i in idx[:MAX_NAMED])
    return text + (f" (and {len(idx) - MAX_NAMED} more)" if len(idx) > MAX_NAMED else "")


def _closest_pair(positions: np.ndarray, cell: np.ndarray | None, limit: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms nearer than limit (minimum image when a cell is given), or None."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    periodic = cell is not None and abs(float(np.linalg.det(cell))) > 1e-9
    atoms = Atoms(positions=positions, cell=cell if periodic else None, pbc=periodic)
    i, j, d = neighbor_list("ijd", atoms, limit, self_interaction=False)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    return int(min(i[k], j[k])), int(max(i[k], j[k])), float(d[k])


def state_problem(
    positions: np.ndarray,
    velocities: np.ndarray | None = None,
    timestep: float | None = None,
    r_cut: float | None = None,
    min_distance: float | None = DEFAULT_MIN_DISTANCE,
    cell: np.ndarray | None = None,
    energy: float | None = None,
    forces: np.ndarray | None = None,
) -> str | None:
    """What is wrong with an MD state by the rules above, naming the atoms; None if nothing is.

    Lengths in Å, velocities in Å per unit of ``timestep`` (so that ``|v| * timestep`` is Å per step).
    min_distance None skips the pair-distance search (the model checks it at every step itself).
    """
    pos = np.asarray(positions, dtype=float)
    bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
    if len(bad):
        return f"atom(s) {atom_list(bad)} have a non-finite position"
    if velocities is not None:
        vel = np.asarray(velocities, dtype=float)
        bad = np.flatnonzero(~np.isfinite(vel).all(axis=1))
        if len(bad):
            return f"atom(s) {atom_list(bad)} have a non-finite velocity"
    if forces is not None:
        bad = np.flatnonzero(~np.isfinite(np.asarray(forces, dtype=float)).all(axis=1))
        if len(bad):
            return f"the model gave non-finite forces on atom(s) {atom_list(bad)}"
    if energy is not None and not np.isfinite(energy):
        return "the model gave a non-finite energy"
    close = None if min_distance is None else _closest_pair(pos, cell, min_distance)
    if close is not None:
        i, j, d = close
        return f"atoms {i} and {j} are {d:.3f} Å apart (closer than {min_distance} Å)"
    if velocities is not None and timestep is not None and r_cut is not None:
        step = np.linalg.norm(np.asarray(velocities, dtype=float), axis=1) * timestep
        fast = np.flatnonzero(step > r_cut)
        if len(fast):
            return (
                f"atom(s) {atom_list(fast)} move up to {step.max():.4g} Å per time step, further than the model's "
                f"cutoff ({r_cut} Å): the run has blown up (time step too large, or forces out of control)"
            )
    return None
