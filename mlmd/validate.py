"""`mlmd validate model.pt`: the same configurations through ASE, OpenMM and LAMMPS (1, 2 and 4 MPI ranks).

The ASE calculator (the packaged model's whole-system entry called from Python) is the reference. Each engine
evaluates the same structures: a cubic and a (larger) triclinic periodic box and a non-periodic cluster. Water
for H/O models; for other element sets random configurations of the model's elements (minimum distance 1.5 Å,
less at high density) at the density of the model's periodic training structures when the card gives it
(TRAINING_DENSITY_KEY), else DEFAULT_DENSITY; plus the user's structures (--structure FILE[@INDEX]). The
table gives, per engine and structure, the relative energy difference, the largest force difference (relative
to the largest reference force component) and the largest stress difference (relative to the largest
reference stress component; OpenMM gives no stress). A difference above its tolerance fails the validation
(exit status 1); an engine that cannot run the model at all (e.g. LAMMPS with a D3 functional it lacks) is
reported as unsupported, with the reason, and fails it too: the file does not behave the same everywhere.

Tolerances (relative): float64 models 1e-9 (energy), 1e-8 (forces, stress); float32 1e-5, 1e-4, 1e-4.
Long-range models add the Ewald accuracy: each engine sums the reciprocal space its own way (LAMMPS: Ewald or
PPPM from its own k-space choice at the model's splitting and accuracy), so forces may differ by up to
10 x accuracy x k_e (eV/Å), stress by accuracy x k_e (eV/Å^3), energy by 1e-6 relative. D3 is the model's own in
every engine (inside pair_style mlmd in LAMMPS): no allowance, except for files packaged before the D3 graph entry,
which LAMMPS runs through its dispersion/d3 (older constants: 1e-6 relative in energy).
Non-periodic clusters run in all three engines (LAMMPS: a shrink-wrapped box, `coul/cut` over the whole
cluster for the electrostatics); a model that needs a lattice (Ewald/PME chosen explicitly) skips them.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmd.deploy.card import ModelCard
from mlmd.units import COULOMB_EV_A


@dataclass
class EngineResult:
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None


@dataclass
class Row:
    engine: str
    structure: str
    natoms: int
    energy: float = float("nan")  # |dE| / |E_ase|
    forces: float = float("nan")  # max |dF| (eV/Å)
    stress: float = float("nan")  # max |ds| (eV/Å^3)
    status: str = "ok"  # ok, FAIL, unsupported, error
    note: str = ""


@dataclass
class Tolerances:
    energy: float  # relative
    forces: float  # relative to max |F_ref|
    stress: float  # relative to max |s_ref|
    forces_abs: float = 0.0  # eV/Å added (long range)
    stress_abs: float = 0.0  # eV/Å^3 added (long range)

    def check(self, row: Row, ref: EngineResult) -> bool:
        f_tol = self.forces * float(np.abs(ref.forces).max()) + self.forces_abs
        ok = row.energy <= self.energy and row.forces <= f_tol
        if ref.stress is not None and not math.isnan(row.stress):
            ok = ok and row.stress <= self.stress * float(np.abs(ref.stress).max()) + self.stress_abs
        return ok


def tolerances(card: ModelCard, override: float | None = None) -> Tolerances:
    if override is not None:
        return Tolerances(override, override, override)
    tol = Tolerances(1e-9, 1e-8, 1e-8) if card.dtype == "float64" else Tolerances(1e-5, 1e-4, 1e-4)
    elec = card.long_range.electrostatics
    if elec is not None:
        acc = elec.accuracy * COULOMB_EV_A
        tol.energy = max(tol.energy, 1e-6)
        tol.forces_abs, tol.stress_abs = 10 * acc, acc
    if card.long_range.dispersion is not None and not card.has_local_dispersion:
        tol.energy = max(tol.energy, 1e-6)  # LAMMPS's dispersion/d3: its D3 constants differ by 1e-6 relative
    return tol


# ------------------------------------------------------------------------------------------ configurations


def _min_width(r_cut: float) -> float:
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
    width = _min_width(r_cut)
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
            ready, note = engine_ready(atoms, _min_width(card.r_cut))
            out.append((name + (f" x{note}" if note else ""), ready))
    return out


# ------------------------------------------------------------------------------------------ engines


def run_ase(atoms, model: str | Path, compiled: bool = False) -> EngineResult:
    """The reference: the TorchScript model; compiled=True: the compiled copy (an error if it cannot run)."""
    from mlmd.engines.ase import MLMDCalculator

    a = atoms.copy()
    a.calc = MLMDCalculator(model, compiled=compiled, domain="off")  # single points across engines, not an MD run
    stress = a.get_stress() if bool(np.all(a.pbc)) else None
    return EngineResult(a.get_potential_energy(), a.get_forces(), stress)


def run_openmm(atoms, model: str | Path) -> EngineResult:
    import openmm
    from openmm import unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.units import EV_TO_KJ_PER_MOL

    top, positions = topology_from_atoms(atoms)
    system = MLMDPotential(model).createSystem(top)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    ctx.setPositions(positions)
    st = ctx.getState(getEnergy=True, getForces=True)
    kj = unit.kilojoule_per_mole
    e = st.getPotentialEnergy().value_in_unit(kj) / EV_TO_KJ_PER_MOL
    f = np.asarray(st.getForces(asNumpy=True).value_in_unit(kj / unit.angstrom)) / EV_TO_KJ_PER_MOL
    del ctx
    return EngineResult(e, f, None)


def run_lammps(atoms, model: str | Path, nprocs: int = 1) -> EngineResult:
    from mlmd.engines.lammps import compute

    r = compute(atoms, model, nprocs=nprocs, in_process=False)
    return EngineResult(r.energy, r.forces, r.stress)


def engines(nprocs: Sequence[int] = (1, 2, 4)) -> dict[str, Callable[[Any, Any], EngineResult]]:
    out: dict[str, Callable[[Any, Any], EngineResult]] = {"openmm": run_openmm}
    for n in nprocs:
        out[f"lammps {n} rank{'s' if n > 1 else ''}"] = lambda a, m, n=n: run_lammps(a, m, n)
    return out


def _unsupported(err: BaseException) -> bool:
    """Setup refusals with a clear message (the engine cannot run this model), as opposed to wrong results."""
    from mlmd.engines.lammps import LammpsError

    try:
        from mlmd.engines.openmm import OpenMMSetupError
    except Exception:  # noqa: BLE001  (OpenMM missing: nothing to match)
        OpenMMSetupError = ()  # type: ignore[assignment]  # noqa: N806
    return isinstance(err, (ValueError, OpenMMSetupError)) and not isinstance(err, LammpsError)


def compare(ref: EngineResult, res: EngineResult, row: Row) -> None:
    row.energy = abs(res.energy - ref.energy) / max(abs(ref.energy), 1e-12)
    row.forces = float(np.abs(res.forces - ref.forces).max())
    if ref.stress is not None and res.stress is not None:
        row.stress = float(np.abs(res.stress - ref.stress).max())


@dataclass
class Report:
    model: str
    dtype: str
    tolerances: Tolerances
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.status == "ok" for r in self.rows) and bool(self.rows)

    def table(self) -> str:
        t = self.tolerances
        head = (f"mlmd validate {self.model} ({self.dtype}): differences from the ASE calculator\n"
                f"tolerances: energy {t.energy:.0e} relative; forces {t.forces:.0e} x max|F| + {t.forces_abs:.1e} "
                f"eV/Å; stress {t.stress:.0e} x max|s| + {t.stress_abs:.1e} eV/Å^3")
        w = max([28] + [len(r.structure) + 2 for r in self.rows])
        lines = [head, f"{'engine':<16}{'structure':<{w}}{'atoms':>6}{'dE/|E|':>11}{'max dF eV/Å':>13}"
                       f"{'max ds eV/Å3':>14}  status"]
        for r in self.rows:
            def fmt(x: float, w: int) -> str:
                return f"{'-':>{w}}" if math.isnan(x) else f"{x:>{w}.2e}"
            line = (f"{r.engine:<16}{r.structure:<{w}}{r.natoms:>6}{fmt(r.energy, 11)}{fmt(r.forces, 13)}"
                    f"{fmt(r.stress, 14)}  {r.status}")
            lines.append(line + (f": {r.note}" if r.note else ""))
        lines.append("PASSED: the engines agree within tolerance" if self.passed else "FAILED")
        return "\n".join(lines)


def validate(
    model: str | Path,
    nprocs: Sequence[int] = (1, 2, 4),
    engine_names: Sequence[str] | None = None,
    tolerance: float | None = None,
    seed: int = 0,
    structures: Sequence[str] = (),
    builtin: bool = True,
) -> Report:
    """Run every configuration through every engine; the Report says what differs by how much.

    structures: the user's files (FILE or FILE@INDEX; see user_structures), checked after the built-in
    configurations (builtin=False: only them)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlmd.deploy.load import read_card

    card = read_card(model)
    report = Report(str(model), card.dtype, tolerances(card, tolerance))
    runners = engines(nprocs)
    if card.compiled is not None:  # its compiled copy (LAMMPS runs it too, when it can) against the TorchScript file
        runners = {"ase compiled": lambda a, m: run_ase(a, m, compiled=True), **runners}
    if engine_names is not None:
        unknown = [e for e in engine_names if not any(k.startswith(e) for k in runners)]
        if unknown:
            raise ValueError(f"unknown engine(s) {unknown}; known: openmm, lammps, ase compiled (a model packaged "
                             "with --compile aoti)")
        runners = {k: v for k, v in runners.items() if any(k.startswith(e) for e in engine_names)}
    if not builtin and not structures:
        raise ValueError("nothing to validate: give --structure files, or keep the built-in configurations")
    lattice_only = card.requires_periodic
    todo = user_structures(structures, card)  # read and checked before any engine runs
    if builtin:
        todo = configurations(card, seed) + todo
    for name, atoms in todo:
        if lattice_only and not bool(np.all(atoms.pbc)):
            continue  # the model needs a lattice (Ewald/PME chosen explicitly): no cluster
        ref = run_ase(atoms, model)
        for engine, run in runners.items():
            row = Row(engine, name, len(atoms))
            try:
                compare(ref, run(atoms, model), row)
                row.status = "ok" if report.tolerances.check(row, ref) else "FAIL"
            except Exception as err:  # noqa: BLE001  (every engine failure goes in the table)
                row.status = "unsupported" if _unsupported(err) else "error"
                row.note = str(err).strip().splitlines()[0][:300] if str(err).strip() else traceback.format_exc(1)
            report.rows.append(row)
    return report
