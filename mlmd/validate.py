"""`mlmd validate model.pt`: the same configurations through ASE, OpenMM and LAMMPS (1 and 2 MPI ranks).

The ASE calculator (the packaged model's whole-system entry called from Python) is the reference. Each engine
evaluates the same structures: periodic boxes of two sizes and a non-periodic cluster. Water for H/O models;
for other element sets random dense configurations of the model's elements (minimum distance 1.5 Å). The
table gives, per engine and structure, the relative energy difference, the largest force difference (relative
to the largest reference force component) and the largest stress difference (relative to the largest
reference stress component; OpenMM gives no stress). A difference above its tolerance fails the validation
(exit status 1); an engine that cannot run the model at all (e.g. LAMMPS with a D3 functional it lacks) is
reported as unsupported, with the reason, and fails it too: the file does not behave the same everywhere.

Tolerances (relative): float64 models 1e-9 (energy), 1e-8 (forces, stress); float32 1e-5, 1e-4, 1e-4.
Long-range models add the Ewald accuracy: each engine sums the reciprocal space its own way (LAMMPS: Ewald or
PPPM from its own k-space choice at the model's splitting and accuracy), so forces may differ by up to
10 x accuracy x k_e (eV/Å), stress by accuracy x k_e (eV/Å^3), energy by 1e-6 relative.
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
    if card.long_range.dispersion is not None:
        tol.energy = max(tol.energy, 1e-6)  # LAMMPS's D3 constants differ by 1e-6 relative
    return tol


# ------------------------------------------------------------------------------------------ configurations


def _min_width(r_cut: float) -> float:
    return 2.0 * r_cut + 0.5  # OpenMM's minimum-image rule (and a margin)


def random_configuration(numbers: Sequence[int], length: float, rng: np.random.Generator, natoms: int,
                         min_distance: float = 1.5, periodic: bool = True):
    """natoms atoms of the given atomic numbers (cycled) placed at random in a cube, at least min_distance apart
    (minimum image when periodic)."""
    from ase import Atoms

    pos: list[np.ndarray] = []
    tries = 0
    while len(pos) < natoms:
        tries += 1
        if tries > 200 * natoms:
            raise ValueError(f"could not place {natoms} atoms {min_distance} Å apart in a {length:.2f} Å cube")
        p = rng.uniform(0.0, length, 3)
        if pos:
            d = np.asarray(pos) - p
            if periodic:
                d -= length * np.round(d / length)
            if np.linalg.norm(d, axis=1).min() < min_distance:
                continue
        pos.append(p)
    symbols = [int(numbers[k % len(numbers)]) for k in range(natoms)]
    rng.shuffle(symbols)
    return Atoms(symbols, positions=np.asarray(pos), cell=np.eye(3) * length if periodic else None, pbc=periodic)


def configurations(card: ModelCard, seed: int = 0) -> list[tuple[str, Any]]:
    """(name, Atoms): two periodic sizes and a non-periodic cluster of the model's elements."""
    from ase import Atoms

    from mlmd.data.generate import water_lattice

    rng = np.random.default_rng(seed)
    r_cut = card.r_cut
    numbers = list(card.atomic_numbers)
    width = _min_width(r_cut)
    out = []
    if set(numbers) >= {1, 8} and set(numbers) <= {1, 8}:
        n = max(2, math.ceil(width / 3.1))
        for k in (n, n + 1):
            out.append((f"water box {k ** 3} molecules", water_lattice(k**3, 3.1 * k, rng)))
        box = water_lattice(8, 6.8, rng)
        out.append(("water cluster 8 molecules", Atoms(box.numbers, positions=box.positions)))
    else:
        for scale in (1.0, 1.3):
            length = width * scale
            natoms = int(0.04 * length**3)
            out.append((f"random box {natoms} atoms", random_configuration(numbers, length, rng, natoms)))
        out.append(("random cluster 20 atoms", random_configuration(numbers, 7.0, rng, 20, periodic=False)))
    return out


# ------------------------------------------------------------------------------------------ engines


def run_ase(atoms, model: str | Path) -> EngineResult:
    from mlmd.engines.ase import MLMDCalculator

    a = atoms.copy()
    a.calc = MLMDCalculator(model)
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


def engines(nprocs: Sequence[int] = (1, 2)) -> dict[str, Callable[[Any, Any], EngineResult]]:
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
        lines = [head, f"{'engine':<16}{'structure':<28}{'atoms':>6}{'dE/|E|':>11}{'max dF eV/Å':>13}"
                       f"{'max ds eV/Å3':>14}  status"]
        for r in self.rows:
            def fmt(x: float, w: int) -> str:
                return f"{'-':>{w}}" if math.isnan(x) else f"{x:>{w}.2e}"
            line = (f"{r.engine:<16}{r.structure:<28}{r.natoms:>6}{fmt(r.energy, 11)}{fmt(r.forces, 13)}"
                    f"{fmt(r.stress, 14)}  {r.status}")
            lines.append(line + (f": {r.note}" if r.note else ""))
        lines.append("PASSED: the engines agree within tolerance" if self.passed else "FAILED")
        return "\n".join(lines)


def validate(
    model: str | Path,
    nprocs: Sequence[int] = (1, 2),
    engine_names: Sequence[str] | None = None,
    tolerance: float | None = None,
    seed: int = 0,
) -> Report:
    """Run every configuration through every engine; the Report says what differs by how much."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlmd.deploy.load import read_card

    card = read_card(model)
    report = Report(str(model), card.dtype, tolerances(card, tolerance))
    runners = engines(nprocs)
    if engine_names is not None:
        unknown = [e for e in engine_names if not any(k.startswith(e) for k in runners)]
        if unknown:
            raise ValueError(f"unknown engine(s) {unknown}; known: openmm, lammps")
        runners = {k: v for k, v in runners.items() if any(k.startswith(e) for e in engine_names)}
    lattice_only = card.requires_periodic
    for name, atoms in configurations(card, seed):
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
