"""The structures `mlmd validate` evaluates in every engine (mlmd.validate): its built-in configurations for
the model's elements and the user's structure files, each made ready for every engine.

Built in: a cubic and a (larger) triclinic periodic box and a non-periodic cluster, wide enough for OpenMM's
minimum-image rule at the model's cutoff. Water for H/O models; for other element sets random configurations
of the model's elements (minimum distance 1.5 Å, less at high density) at the density of the model's periodic
training structures when the card gives it, else DEFAULT_DENSITY. The user's files (FILE or FILE@INDEX, any
format ase.io.read reads) are checked against the model (elements, periodicity) and their cells rotated,
replicated and reduced to the form every engine takes (engine_ready).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlmd.deploy.card import ModelCard


def minimum_image_width(r_cut: float) -> float:
    """The smallest cell width (Å) a periodic structure is given for a model of cutoff r_cut."""
    return 2.0 * r_cut + 0.5  # OpenMM's minimum-image rule (and a margin)


DEFAULT_DENSITY = 0.04  # atoms/Å^3 (about half a metal's) when the card does not give the training data's
TILT = 0.3  # the triclinic default cell: a = L x, b = L (TILT, 1, 0), c = L (TILT, TILT, 1)


def widths(cell: np.ndarray) -> np.ndarray:
    """Perpendicular widths of a cell (distance between opposite faces), one per cell vector."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(float(np.linalg.det(cell)))
    areas = [np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return np.array([volume / a for a in areas])


def triclinic_cell(length: float) -> np.ndarray:
    return length * np.array([[1.0, 0.0, 0.0], [TILT, 1.0, 0.0], [TILT, TILT, 1.0]])


def training_density(card: ModelCard) -> float | None:
    """The median number density (atoms/Å^3) of the model's periodic training structures, when the card has it
    (the card's reader and validate() guarantee a finite positive number or None)."""
    return card.training_number_density


def random_configuration(numbers: Sequence[int], length: float, rng: np.random.Generator, natoms: int,
                         min_distance: float = 1.5, periodic: bool = True, cell: np.ndarray | None = None):
    """natoms atoms of the given atomic numbers (cycled) placed at random in a cube of side length (or in the
    given periodic cell), at least min_distance apart (minimum image when periodic)."""
    from ase import Atoms

    box = np.eye(3) * length if cell is None else np.asarray(cell, dtype=float)
    images = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float) @ box
    frac: list[np.ndarray] = []
    tries = 0
    while len(frac) < natoms:
        tries += 1
        if tries > 200 * natoms:
            where = f"a {length:.2f} Å cube" if cell is None else f"a cell of {abs(np.linalg.det(box)):.1f} Å^3"
            raise ValueError(f"could not place {natoms} atoms {min_distance} Å apart in {where}")
        f = rng.uniform(0.0, 1.0, 3)
        if frac:
            d = np.asarray(frac) - f
            if periodic:
                d -= np.round(d)
                dist = np.linalg.norm((d @ box)[:, None, :] + images[None, :, :], axis=2).min()
            else:
                dist = np.linalg.norm(d @ box, axis=1).min()
            if dist < min_distance:
                continue
        frac.append(f)
    symbols = [int(numbers[k % len(numbers)]) for k in range(natoms)]
    rng.shuffle(symbols)
    return Atoms(symbols, positions=np.asarray(frac) @ box, cell=box if periodic else None, pbc=periodic)


def _triclinic_water(k: int, spacing: float, rng: np.random.Generator):
    """k^3 water molecules on a sheared grid: each molecule's centre keeps its fractional position when the
    cube becomes the triclinic cell, the molecule itself is moved rigidly."""
    from mlmd.data.generate import water_lattice

    cube = water_lattice(k**3, spacing * k, rng)
    cell = triclinic_cell(spacing * k)
    pos = cube.positions.reshape(-1, 3, 3)
    centres = pos.mean(axis=1)
    new_centres = (centres / (spacing * k)) @ cell
    cube.positions = (pos - centres[:, None, :] + new_centres[:, None, :]).reshape(-1, 3)
    cube.set_cell(cell, scale_atoms=False)
    return cube


def configurations(card: ModelCard, seed: int = 0) -> list[tuple[str, Any]]:
    """(name, Atoms): a cubic and a (larger) triclinic periodic box and a non-periodic cluster of the model's
    elements, at the training data's density when the card gives it (training_number_density)."""
    from ase import Atoms

    from mlmd.data.generate import water_lattice

    rng = np.random.default_rng(seed)
    r_cut = card.r_cut
    numbers = list(card.atomic_numbers)
    width = minimum_image_width(r_cut)
    density = training_density(card)
    out = []
    if set(numbers) >= {1, 8} and set(numbers) <= {1, 8}:
        spacing = 3.1 if density is None else float(np.clip((3.0 / density) ** (1 / 3), 2.8, 4.0))
        n = max(2, math.ceil(width / spacing))
        out.append((f"water box {n ** 3} molecules", water_lattice(n**3, spacing * n, rng)))
        k = n + 1
        while widths(triclinic_cell(spacing * k)).min() < width:
            k += 1
        out.append((f"water box {k ** 3} molecules triclinic", _triclinic_water(k, spacing, rng)))
        box = water_lattice(8, 6.8, rng)
        out.append(("water cluster 8 molecules", Atoms(box.numbers, positions=box.positions)))
    else:
        rho = DEFAULT_DENSITY if density is None else density
        min_distance = min(1.5, 0.75 * rho ** (-1 / 3))  # random packing stays far below jamming
        length = width
        natoms = max(len(numbers), round(rho * length**3))
        out.append((f"random box {natoms} atoms", random_configuration(numbers, length, rng, natoms, min_distance)))
        length = width * 1.3
        while widths(triclinic_cell(length)).min() < width:
            length *= 1.1
        cell = triclinic_cell(length)
        natoms = max(len(numbers), round(rho * abs(np.linalg.det(cell))))
        out.append((f"random box {natoms} atoms triclinic",
                    random_configuration(numbers, length, rng, natoms, min_distance, cell=cell)))
        out.append(("random cluster 20 atoms", random_configuration(numbers, 7.0, rng, 20, periodic=False)))
    return out


# ------------------------------------------------------------------------------------------ the user's structures


def _split_index(spec: str) -> tuple[str, str]:
    """FILE or FILE@INDEX (ASE's index syntax: 0, -1, 2:10, ::5); a file whose name holds '@' is taken whole."""
    if "@" in spec and not Path(spec).exists():
        path, index = spec.rsplit("@", 1)
        return path, index
    return spec, ":"


def engine_ready(atoms, min_width: float) -> tuple[Any, str]:
    """The structure as every engine takes it, and a note of what was done: a periodic cell rotated to the
    lower-triangular form (a along x, b in the xy plane), replicated until its smallest width reaches
    min_width (OpenMM's minimum image), and reduced (a_x >= 2|b_x|, a_x >= 2|c_x|, b_y >= 2|c_y|: OpenMM's
    rule; the same lattice); a non-periodic one unchanged."""
    a = atoms.copy()
    a.calc = None
    if not bool(a.pbc.all()):
        return a, ""
    notes = []
    lower, _ = a.cell.standard_form()
    if not np.allclose(lower, a.cell.array, atol=1e-12):
        a.set_cell(lower, scale_atoms=True)
    w = widths(a.cell.array)
    reps = [max(1, math.ceil(min_width / wi - 1e-9)) for wi in w]
    if any(r > 1 for r in reps):
        a = a.repeat(reps)
        notes.append("x".join(str(r) for r in reps))
    cell = a.cell.array.copy()
    cell[2] -= round(cell[2, 1] / cell[1, 1]) * cell[1]
    cell[2] -= round(cell[2, 0] / cell[0, 0]) * cell[0]
    cell[1] -= round(cell[1, 0] / cell[0, 0]) * cell[0]
    if not np.allclose(cell, a.cell.array):
        a.set_cell(cell, scale_atoms=False)
        a.wrap()
    return a, " ".join(notes)


def user_structures(specs: Sequence[str], card: ModelCard) -> list[tuple[str, Any]]:
    """(name, Atoms) for each selected frame of each file (FILE or FILE@INDEX, anything ase.io.read reads), made
    engine-ready (see engine_ready); a clear ValueError for what cannot be validated."""
    import ase.io
    from ase.data import chemical_symbols
    from ase.io.formats import string2index

    numbers = set(card.atomic_numbers)
    model_elements = ", ".join(chemical_symbols[z] for z in sorted(numbers))
    lattice_only = card.requires_periodic
    out = []
    for spec in specs:
        path, index = _split_index(spec)
        if not Path(path).is_file():
            raise FileNotFoundError(f"structure file not found: {path}")
        try:
            selection = string2index(index)
            if not isinstance(selection, (int, slice)):
                raise ValueError(index)
        except ValueError:
            raise ValueError(f"{spec}: index {index!r} is not a frame number or slice (0, -1, 2:10, ::5)") from None
        try:
            frames = ase.io.read(path, ":")
        except Exception as err:  # noqa: BLE001  (unknown format, a parse error: ASE raises many kinds)
            raise ValueError(f"cannot read structure file {path} ({type(err).__name__}: {err}); give any format "
                             "ase.io.read reads (extxyz, cif, POSCAR, lammps-data with its format, ...)") from None
        frames = frames if isinstance(frames, list) else [frames]
        ids = range(len(frames))
        try:
            chosen = [ids[selection]] if isinstance(selection, int) else list(ids[selection])
        except IndexError:
            raise ValueError(f"{spec}: no frame {index} in {path} ({len(frames)} frames)") from None
        if not chosen:
            raise ValueError(f"{spec}: the selection {index!r} holds no frame of {path} ({len(frames)} frames)")
        multi = len(frames) > 1
        for i in chosen:
            atoms = frames[i]
            name = Path(path).name + (f"[{i}]" if multi else "")
            if len(atoms) == 0:
                raise ValueError(f"structure {name}: no atoms")
            other = sorted({int(z) for z in atoms.numbers} - numbers)
            if other:
                raise ValueError(f"structure {name} holds {', '.join(chemical_symbols[z] for z in other)}, which the "
                                 f"model does not know (its elements: {model_elements})")
            pbc = np.asarray(atoms.pbc, dtype=bool)
            if pbc.any() and not pbc.all():
                raise ValueError(f"structure {name} is periodic in some directions only (pbc={pbc.tolist()}); "
                                 "validate checks fully periodic cells or non-periodic structures (OpenMM has no "
                                 "partial periodicity): make it periodic with enough vacuum")
            if pbc.all() and atoms.cell.volume < 1e-6:
                raise ValueError(f"structure {name} is periodic but its cell has no volume")
            if not pbc.any() and lattice_only:
                raise ValueError(f"structure {name} is not periodic, but the model's electrostatics "
                                 f"({card.long_range.electrostatics.method}) needs a lattice")
            ready, note = engine_ready(atoms, minimum_image_width(card.r_cut))
            out.append((name + (f" x{note}" if note else ""), ready))
    return out
