"""`mlmd md --engine openmm`: the Langevin NVT/NPT run with DCD trajectory, progress table and uncertainty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import openmm
import torch
from openmm import app, unit

from mlmd import keys as K
from mlmd.engines.checks import MDError
from mlmd.engines.openmm.potential import MLMDPotential
from mlmd.engines.openmm.reporters import DomainReporter, UncertaintyReporter
from mlmd.engines.openmm.steps import checked_state, checked_step, md_failure
from mlmd.engines.openmm.topology import topology_from_atoms
from mlmd.engines.progress import MDProgress
from mlmd.units import EV_TO_KJ_PER_MOL


def run_md(
    model: str | Path,
    structure: str | Path,
    steps: int = 200,
    temperature: float = 300.0,
    timestep_fs: float = 0.5,
    replicate: tuple[int, int, int] | list[int] = (1, 1, 1),
    log_every: int = 20,
    trajectory: str | Path | None = None,
    seed: int = 0,
    ensemble: str = "nvt",
    threads: int = 1,
    platform: str = "CPU",
    uncertainty: Optional[dict[str, Any]] = None,
    domain: str = "warn",
) -> dict[str, float]:
    """`mlmd md --engine openmm`: Langevin (LangevinMiddleIntegrator, 1/ps) NVT, or NPT with a Monte Carlo
    barostat at 1 bar; DCD trajectory (with a PDB of the first frame beside it). `uncertainty`: keyword
    arguments of UncertaintyReporter (threshold, harvest, stop, log) for a committee model, checked every
    log_every steps. `domain`: "warn", "stop" or "off", the training-domain check of every step (DomainReporter)."""
    import time

    import ase.io

    if ensemble not in ("nvt", "npt"):
        raise ValueError(f"the OpenMM engine runs nvt or npt, not {ensemble!r}")
    torch.set_num_threads(max(1, int(threads)))
    atoms = ase.io.read(str(structure)).repeat(tuple(replicate))
    top, positions = topology_from_atoms(atoms)
    potential = MLMDPotential(model)
    system = potential.createSystem(top)
    r_cut, min_distance = potential.card.r_cut, potential.card.min_distance
    if ensemble == "npt":
        if not system.usesPeriodicBoundaryConditions():
            raise ValueError("NPT needs a periodic structure")
        system.addForce(openmm.MonteCarloBarostat(1.0 * unit.bar, temperature * unit.kelvin, 25))
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, 1.0 / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(seed + 1)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": str(max(1, int(threads)))} if platform == "CPU" else {}
    simulation = app.Simulation(top, system, integrator, plat, props)
    simulation.context.setPositions(positions)
    try:  # evaluates the forces of the starting structure
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 1)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None
    if trajectory:
        trajectory = Path(trajectory)
        if trajectory.suffix.lower() != ".dcd":
            raise ValueError(f"the OpenMM engine writes DCD trajectories: name it *.dcd, not {trajectory.name}")
        with open(trajectory.with_suffix(".pdb"), "w") as f:
            app.PDBFile.writeFile(top, positions, f)
        simulation.reporters.append(app.DCDReporter(str(trajectory), log_every))
    dom = DomainReporter(model, 1, top, mode=domain)
    dom.report(simulation, simulation.context.getState(getPositions=True))  # the starting structure: step 0
    simulation.reporters.append(dom)
    unc: Optional[UncertaintyReporter] = None
    if uncertainty is not None:
        unc = UncertaintyReporter(model, log_every, top, timestep_fs=timestep_fs, **uncertainty)
        simulation.reporters.append(unc)
    n_dof = 3 * system.getNumParticles() - 3
    kb = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    progress = MDProgress(
        f"OpenMM {ensemble.upper()} ({plat.getName()} platform, TorchForce): {len(atoms)} atoms, {steps} steps of "
        f"{timestep_fs} fs at {temperature} K",
        timestep_fs, unc is not None,
    )
    last = progress.t0
    done = 0
    temp = float("nan")
    while done < steps:
        n = min(log_every, steps - done)
        checked_step(simulation, n, r_cut, min_distance)
        done += n
        now = time.perf_counter()
        st = checked_state(simulation, r_cut, min_distance, getEnergy=True)
        epot = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
        ekin_kj = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not np.isfinite(epot):  # a model packaged before the model checked its energy itself
            raise MDError(f"OpenMM MD stopped at step {simulation.context.getStepCount()}: the model gave a "
                          "non-finite energy")
        temp = 2 * ekin_kj / (n_dof * kb)
        progress.row(
            done, epot, ekin_kj / EV_TO_KJ_PER_MOL, temp, (now - last) / n * 1000,
            *((float(unc.last[K.ENERGY_STD]), float(unc.last[K.FORCES_STD].max())) if unc else ()),
        )
        last = time.perf_counter()
    wall = progress.done(steps)
    result = {"ms_per_step": wall / max(steps, 1) * 1000, "temperature": temp}
    if unc is not None:
        unc.gate.close()
        result["n_harvested"] = unc.gate.n_harvested
    return result
