"""Checked stepping: ``simulation.step``/``getState`` under TorchScript's plain executor, an OpenMMException or
a broken state turned into an :class:`mlmd.engines.checks.MDError` naming the step and the atoms.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import openmm
import torch
from openmm import app, unit

from mlmd.deploy.card import DEFAULT_MIN_DISTANCE
from mlmd.engines.checks import MDError, state_problem
from mlmd.units import NM_TO_ANGSTROM


def _state_arrays(simulation: app.Simulation) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Positions (Å), velocities (Å/ps) and the periodic cell (Å, None if not periodic) of the Context."""
    st = simulation.context.getState(getPositions=True, getVelocities=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
    vel = st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond) * NM_TO_ANGSTROM
    cell = None
    if simulation.system.usesPeriodicBoundaryConditions():
        cell = np.asarray(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_TO_ANGSTROM
    return np.asarray(pos), np.asarray(vel), cell


def md_failure(
    simulation: app.Simulation, err: Exception, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE
) -> MDError:
    """The :class:`mlmd.engines.checks.MDError` for an OpenMMException raised while OpenMM computed forces.

    The model raises inside the TorchForce (atoms too close, non-finite positions or energy), and OpenMM raises
    on NaN coordinates; the Context still holds the configuration that failed, which is examined to name the
    atoms (System particle indices); the model's own message is the fallback.
    """
    from mlmd.deploy.load import unwrap_torchscript_error

    step = simulation.context.getStepCount()  # the configuration after this many steps failed
    dt_ps = simulation.integrator.getStepSize().value_in_unit(unit.picosecond)
    pos, vel, cell = _state_arrays(simulation)
    problem = state_problem(pos, vel, dt_ps, r_cut, min_distance, cell)
    if problem is None:
        problem = str(unwrap_torchscript_error(err)).strip().splitlines()[-1]
    return MDError(f"OpenMM MD stopped at step {step}: {problem}")


def checked_step(
    simulation: app.Simulation, steps: int, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE
) -> None:
    """``simulation.step(steps)``, stopping with :class:`mlmd.engines.checks.MDError` naming the step and the
    atoms when the state breaks (the rules are in mlmd.engines.checks): a failed force evaluation is examined
    by :func:`md_failure`; after the steps, positions and velocities are checked once more (a non-finite or
    runaway velocity).

    The steps run under TorchScript's plain executor (as in LAMMPS and ASE): openmm-torch calls the model from
    C++ on this thread, and the default profiling executor costs ~15% more CPU per step (5,184 water atoms:
    518 -> 439 ms). The Context must exist already (it does once the Simulation is built): one created inside
    the block cannot call its model's methods. Own scripts get the same with
    ``with torch.jit.optimized_execution(False): simulation.step(n)``."""
    try:
        with torch.jit.optimized_execution(False):
            simulation.step(steps)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None
    dt_ps = simulation.integrator.getStepSize().value_in_unit(unit.picosecond)
    pos, vel, cell = _state_arrays(simulation)
    problem = state_problem(pos, vel, dt_ps, r_cut, None, cell)
    if problem:
        raise MDError(f"OpenMM MD stopped at step {simulation.context.getStepCount()}: {problem}")


def checked_state(
    simulation: app.Simulation, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE, **kwargs: Any
) -> openmm.State:
    """``simulation.context.getState(**kwargs)``; getEnergy/getForces evaluate the model on the current positions
    (after ``step(n)`` they have not been yet), so a failure there is reported as in :func:`checked_step`."""
    try:
        with torch.jit.optimized_execution(False):
            return simulation.context.getState(**kwargs)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None
