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
The structures themselves are built and read in mlmd.validate_structures.
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
from mlmd.validate_structures import configurations, user_structures


@dataclass
class EngineResult:
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None
    note: str = ""  # what the engine ran, where it has a choice (LAMMPS: the compiled copy or TorchScript)


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


# ------------------------------------------------------------------------------------------ engines


def run_ase(atoms, model: str | Path, compiled: bool = False, tune: bool = False) -> EngineResult:
    """The reference: the TorchScript model; compiled=True: the compiled copy (an error if it cannot run)."""
    from mlmd.engines.ase import MLMDCalculator

    a = atoms.copy()
    # single points across engines, not an MD run
    a.calc = MLMDCalculator(model, compiled=compiled, domain="off", tune_electrostatics=tune)
    stress = a.get_stress() if bool(np.all(a.pbc)) else None
    return EngineResult(a.get_potential_energy(), a.get_forces(), stress)


def run_openmm(atoms, model: str | Path, tune: bool = False) -> EngineResult:
    import openmm
    from openmm import unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.units import EV_TO_KJ_PER_MOL

    top, positions = topology_from_atoms(atoms)
    system = MLMDPotential(model, tune_electrostatics=tune).createSystem(top, positions=positions)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    ctx.setPositions(positions)
    st = ctx.getState(getEnergy=True, getForces=True)
    kj = unit.kilojoule_per_mole
    e = st.getPotentialEnergy().value_in_unit(kj) / EV_TO_KJ_PER_MOL
    f = np.asarray(st.getForces(asNumpy=True).value_in_unit(kj / unit.angstrom)) / EV_TO_KJ_PER_MOL
    del ctx
    return EngineResult(e, f, None)


def run_lammps(atoms, model: str | Path, nprocs: int = 1, tune: bool = False) -> EngineResult:
    from mlmd.engines.lammps import compute

    r = compute(atoms, model, nprocs=nprocs, in_process=False, tune_electrostatics=tune)
    compiled = [what for what, line in (("compiled", "one-call evaluations run the compiled copy"),
                                        ("compiled layers", "layer-by-layer evaluations run the compiled programs"))
                if line in r.log]
    # the mode the pair style chose decides which of the two ran
    layers = "pair_style mlmd: parallel layers" in r.log
    ran = [w for w in compiled if (w == "compiled layers") == layers]
    return EngineResult(r.energy, r.forces, r.stress, note=ran[0] if ran else "")


def engines(nprocs: Sequence[int] = (1, 2, 4), tune: bool = False) -> dict[str, Callable[[Any, Any], EngineResult]]:
    kw = {"tune": True} if tune else {}  # the plain calls stay as they were (tests substitute the runners)
    out: dict[str, Callable[[Any, Any], EngineResult]] = {"openmm": lambda a, m: run_openmm(a, m, **kw)}
    for n in nprocs:
        out[f"lammps {n} rank{'s' if n > 1 else ''}"] = lambda a, m, n=n: run_lammps(a, m, n, **kw)
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
    row.note = res.note
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
    tune_electrostatics: bool = False,
) -> Report:
    """Run every configuration through every engine; the Report says what differs by how much.

    structures: the user's files (FILE or FILE@INDEX; see user_structures), checked after the built-in
    configurations (builtin=False: only them). tune_electrostatics: every engine chooses the Ewald/PME parameters
    for each structure's own charges and cell (ASE's and OpenMM's tune_electrostatics, LAMMPS's `ewald tune` or a
    tuned gewald), so that they agree on the parameters too."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlmd.deploy.load import read_card

    card = read_card(model)
    report = Report(str(model), card.dtype, tolerances(card, tolerance))
    runners = engines(nprocs, tune_electrostatics)
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
        ref = run_ase(atoms, model, tune=tune_electrostatics)
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
