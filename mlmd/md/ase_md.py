"""`mlmd md --engine ase`: Langevin NVT in ASE, stopped at the first broken state (advance)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mlmd.deploy.card import DEFAULT_MIN_DISTANCE
from mlmd.md.progress import MDProgress
from mlmd.md.request import DEFAULT_BOX, MDRequest, read_structure


def advance(dyn: Any, steps: int, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE) -> None:
    """dyn.run(steps) for an ASE MD integrator, stopping with MDError at the first broken state.

    The rules are mlmd.engines.checks's. Every step checks positions and velocities (cheap); the model itself
    refuses atoms that come too close or a non-finite energy, and its error is reported with the step.
    """
    import torch

    from mlmd.engines.checks import MDError, state_problem

    atoms = dyn.atoms
    started = [False]

    def cell() -> np.ndarray | None:
        return np.asarray(atoms.cell.array) if atoms.pbc.all() else None

    def check() -> None:
        started[0] = True  # observers run after each completed step (and once before the first)
        problem = state_problem(atoms.positions, atoms.get_velocities(), dyn.dt, r_cut, None)
        if problem:
            raise MDError(f"ASE MD stopped at step {dyn.nsteps}: {problem}")

    dyn.attach(check, interval=1)
    try:
        dyn.run(steps)
    except (ValueError, RuntimeError) as err:
        if type(err) not in (ValueError, RuntimeError, torch.jit.Error):  # MDError, UncertaintyExceeded, ...: as is
            raise
        # the forces of step n+1 are computed after its positions are updated, before nsteps counts it
        step = dyn.nsteps + 1 if started[0] else dyn.nsteps
        problem = state_problem(atoms.positions, atoms.get_velocities(), dyn.dt, r_cut, min_distance, cell())
        raise MDError(f"ASE MD stopped at step {step}: {problem or err}") from None


def run(r: MDRequest) -> dict[str, float]:
    """ASE Langevin (friction 0.01/fs) NVT; ASE trajectory every log_every steps; the uncertainty gate (committee
    models) checked every log_every steps."""
    if r.ensemble != "nvt":
        raise ValueError(f"the ASE engine runs NVT (Langevin) only, not {r.ensemble!r}: use --engine lammps")
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from mlmd.engines.ase import MLMDCalculator

    atoms = read_structure(r.structure or DEFAULT_BOX)
    atoms = atoms.repeat(tuple(r.replicate))
    atoms.calc = MLMDCalculator(r.model, domain=r.domain)
    MaxwellBoltzmannDistribution(atoms, temperature_K=r.temperature, rng=np.random.default_rng(r.seed))
    Stationary(atoms)
    dyn = Langevin(
        atoms, r.timestep_fs * units.fs, temperature_K=r.temperature, friction=0.01 / units.fs,
        rng=np.random.default_rng(r.seed + 1),
    )
    if r.trajectory:
        from ase.io.trajectory import Trajectory

        dyn.attach(Trajectory(str(r.trajectory), "w", atoms), interval=r.log_every)
    progress = MDProgress(
        f"ASE Langevin NVT: {len(atoms)} atoms, {r.steps} steps of {r.timestep_fs} fs at {r.temperature} K",
        r.timestep_fs, atoms.calc.card.has_uncertainty, r.echo,
    )
    last = [progress.t0, 0]

    def report() -> None:
        now = time.perf_counter()
        done = dyn.nsteps - last[1]
        ms = (now - last[0]) / done * 1000 if done else float("nan")
        last[0], last[1] = now, dyn.nsteps
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        res = atoms.calc.results
        spread = (res["energy_std"], res["forces_std"].max()) if "energy_std" in res else ()
        progress.row(dyn.nsteps, epot, ekin, atoms.get_temperature(), ms, *spread)

    dyn.attach(report, interval=r.log_every)
    gate = None
    if r.uncertainty is not None:
        from mlmd.uncertainty import UncertaintyGate

        if not atoms.calc.card.has_uncertainty:
            raise ValueError(f"{r.model} is not a committee model: train it with `mlmd train --ensemble K`")
        gate = UncertaintyGate(timestep_fs=r.timestep_fs, **r.uncertainty)
        dyn.attach(
            lambda: gate.check(dyn.nsteps, atoms, atoms.calc.results["energy_std"], atoms.calc.results["forces_std"]),
            interval=r.log_every,
        )
    try:
        advance(dyn, r.steps, atoms.calc.r_cut, atoms.calc.min_distance)
    finally:
        if gate is not None:
            gate.close()
    wall = progress.done(r.steps)
    result = {"ms_per_step": wall / max(r.steps, 1) * 1000, "temperature": atoms.get_temperature()}
    if gate is not None:
        result["n_harvested"] = gate.n_harvested
    return result
