"""`mlmd md --engine openmm`: the Langevin NVT/NPT run with DCD trajectory, progress table and uncertainty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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
from mlmd.md.progress import MDProgress
from mlmd.md.request import DEFAULT_BOX, MDRequest
from mlmd.units import EV_TO_KJ_PER_MOL


def run(r: MDRequest) -> dict[str, float]:
    """Langevin (LangevinMiddleIntegrator, 1/ps) NVT, or NPT with a Monte Carlo barostat at r.pressure_bar; DCD
    trajectory (with a PDB of the first frame beside it); r.uncertainty: keyword arguments of UncertaintyReporter
    (threshold, harvest, stop, log) for a committee model, checked every log_every steps; r.domain: "warn",
    "stop" or "off", the training-domain check of every step (DomainReporter)."""
    import time

    import ase.io

    if r.ensemble not in ("nvt", "npt"):
        raise ValueError(f"the OpenMM engine runs nvt or npt, not {r.ensemble!r}")
    torch.set_num_threads(max(1, int(r.threads)))
    atoms = ase.io.read(str(r.structure or DEFAULT_BOX)).repeat(tuple(r.replicate))
    top, positions = topology_from_atoms(atoms)
    potential = MLMDPotential(r.model)
    system = potential.createSystem(top)
    r_cut, min_distance = potential.card.r_cut, potential.card.min_distance
    if r.ensemble == "npt":
        if not system.usesPeriodicBoundaryConditions():
            raise ValueError("NPT needs a periodic structure")
        system.addForce(openmm.MonteCarloBarostat(r.pressure_bar * unit.bar, r.temperature * unit.kelvin, 25))
    integrator = openmm.LangevinMiddleIntegrator(
        r.temperature * unit.kelvin, 1.0 / unit.picosecond, r.timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(r.seed + 1)
    plat = openmm.Platform.getPlatformByName(r.platform)
    props = {"Threads": str(max(1, int(r.threads)))} if r.platform == "CPU" else {}
    simulation = app.Simulation(top, system, integrator, plat, props)
    simulation.context.setPositions(positions)
    try:  # evaluates the forces of the starting structure
        simulation.context.setVelocitiesToTemperature(r.temperature * unit.kelvin, r.seed + 1)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None
    if r.trajectory:
        trajectory = Path(r.trajectory)
        if trajectory.suffix.lower() != ".dcd":
            raise ValueError(f"the OpenMM engine writes DCD trajectories: name it *.dcd, not {trajectory.name}")
        with open(trajectory.with_suffix(".pdb"), "w") as f:
            app.PDBFile.writeFile(top, positions, f)
        simulation.reporters.append(app.DCDReporter(str(trajectory), r.log_every))
    dom = DomainReporter(r.model, 1, top, mode=r.domain)
    dom.report(simulation, simulation.context.getState(getPositions=True))  # the starting structure: step 0
    simulation.reporters.append(dom)
    unc: Optional[UncertaintyReporter] = None
    if r.uncertainty is not None:
        unc = UncertaintyReporter(r.model, r.log_every, top, timestep_fs=r.timestep_fs, **r.uncertainty)
        simulation.reporters.append(unc)
    n_dof = 3 * system.getNumParticles() - 3
    kb = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    progress = MDProgress(
        f"OpenMM {r.ensemble.upper()} ({plat.getName()} platform, TorchForce): {len(atoms)} atoms, {r.steps} steps "
        f"of {r.timestep_fs} fs at {r.temperature} K",
        r.timestep_fs, unc is not None, r.echo,
    )
    last = progress.t0
    done = 0
    temp = float("nan")
    while done < r.steps:
        n = min(r.log_every, r.steps - done)
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
    wall = progress.done(r.steps)
    result = {"ms_per_step": wall / max(r.steps, 1) * 1000, "temperature": temp}
    if unc is not None:
        unc.gate.close()
        result["n_harvested"] = unc.gate.n_harvested
    return result
