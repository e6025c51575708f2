"""System building: the model's TorchForce (and, with ``electrostatics='engine'``, OpenMM's PME on the model's
charges) added to an OpenMM System, with the element, periodicity and box checks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import openmm
import torch
from openmm import app, unit

from mlmd.deploy.card import ElectrostaticsCard, ModelCard
from mlmd.engines.openmm.bridge import FIX_OPENMM, build_bridge
from mlmd.engines.openmm.kernels import _import_openmmtorch
from mlmd.engines.openmm.model import LoadedModel, OpenMMSetupError, _as_loaded, resolve_electrostatics
from mlmd.ewald_params import check_accuracy, choose_parameters, openmm_pme_parameters
from mlmd.units import ANGSTROM_TO_NM

_DEFAULT_REAL_SPACE_CUTOFF = 8.0  # Å, mlmd's own default


def _atomic_numbers(topology: app.Topology, atoms: list[int], card: ModelCard) -> list[int]:
    all_atoms = list(topology.atoms())
    known = set(card.atomic_numbers)
    numbers = []
    for i in atoms:
        if i < 0 or i >= len(all_atoms):
            raise OpenMMSetupError(f"atom index {i} is outside the Topology ({len(all_atoms)} atoms)")
        atom = all_atoms[i]
        where = f"atom {i} ({atom.name} in residue {atom.residue.name} {atom.residue.id})"
        if atom.element is None:
            raise OpenMMSetupError(f"{where} has no element (virtual site or extra particle?): the model needs one")
        z = int(atom.element.atomic_number)
        if z not in known:
            raise OpenMMSetupError(
                f"{where} is {atom.element.symbol} (Z={z}), an element this model does not know; "
                f"it knows {', '.join(card.elements)}"
            )
        numbers.append(z)
    return numbers


def _system_is_periodic(topology: app.Topology, system: openmm.System, periodic: Optional[bool]) -> bool:
    if periodic is not None:
        return bool(periodic)
    if system.getNumForces() == 0:
        return topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
    return bool(system.usesPeriodicBoundaryConditions())


def _box_angstrom(topology: app.Topology, system: openmm.System) -> np.ndarray:
    vectors = topology.getPeriodicBoxVectors()
    if vectors is None:
        vectors = system.getDefaultPeriodicBoxVectors()
    return np.array([[v[k].value_in_unit(unit.angstrom) for k in range(3)] for v in vectors], dtype=float)


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """The three distances between opposite faces of a cell (rows = lattice vectors)."""
    volume = abs(float(np.linalg.det(cell)))
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return volume / areas



def _fixed_charges(elec: ElectrostaticsCard, numbers: list[int]) -> np.ndarray:
    return np.array([elec.charges.get(z, 0.0) for z in numbers], dtype=float)


def _structure_charges(
    loaded: LoadedModel, elec: ElectrostaticsCard, numbers: list[int], indices: list[int], box: np.ndarray,
    positions: Any,
) -> torch.Tensor:
    """The ML atoms' charges (float64, e): the card's fixed ones, or the model's prediction at ``positions``."""
    if elec.mode != "predicted":
        return torch.tensor(_fixed_charges(elec, numbers))
    if positions is None:
        raise OpenMMSetupError(
            "tune_electrostatics=True with a model that predicts its charges needs the positions (the charges depend "
            "on them): createSystem(topology, positions=positions)"
        )
    if unit.is_quantity(positions):
        xyz = np.asarray(positions.value_in_unit(unit.angstrom), dtype=float)
    else:
        xyz = np.asarray(positions, dtype=float) / ANGSTROM_TO_NM  # OpenMM's unit: nm
    dtype = getattr(torch, loaded.card.dtype)
    q = loaded.module.charges(torch.tensor(xyz[indices], dtype=dtype), torch.tensor(box, dtype=dtype),
                              torch.tensor(numbers), torch.ones(3, dtype=torch.bool))
    return q.detach().to(torch.float64)


def _torch_force(bridge: torch.jit.ScriptModule, periodic: bool) -> openmm.Force:
    openmmtorch = _import_openmmtorch()

    fd, path = tempfile.mkstemp(prefix="mlmd_openmm_", suffix=".pt")
    os.close(fd)
    try:
        bridge.save(path)
        force = openmmtorch.TorchForce(path)  # the file is read into memory here
    finally:
        os.unlink(path)
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("mlmd")
    return force


def _engine_electrostatics(
    n_particles: int, atoms: list[int], numbers: list[int], elec: ElectrostaticsCard, periodic: bool,
    box: Optional[np.ndarray], tune: bool = False,
) -> openmm.NonbondedForce:
    """OpenMM's own Coulomb sum (PME, or no cutoff when not periodic) on the model's fixed charges (the card
    validated that a fixed-charge model has one for each of its elements; predicted ones are refused before).
    ``tune``: the splitting and mesh chosen for this structure's charges and box (as the model's own tune)."""
    force = openmm.NonbondedForce()
    force.setName("mlmd electrostatics")
    if periodic:
        assert box is not None
        force.setNonbondedMethod(openmm.NonbondedForce.PME)
        cutoff = elec.r_cut if elec.r_cut is not None else _DEFAULT_REAL_SPACE_CUTOFF
        half = float(perpendicular_widths(box).min()) / 2
        if cutoff > half:
            raise OpenMMSetupError(
                f"the model's Ewald real-space cutoff ({cutoff} Å) is more than half the smallest box width "
                f"({2 * half:.4f} Å): OpenMM's PME needs a larger box for electrostatics='engine'"
            )
        force.setCutoffDistance(cutoff * ANGSTROM_TO_NM)
        if tune:  # the structure's own: the same sigma and mesh spacing as Electrostatics.tune gives
            params = choose_parameters(elec.accuracy, r_cut=cutoff, interpolation_order=int(
                elec.details.get("interpolation_order", 6)), charges=_fixed_charges(elec, numbers), cell=box)
            pme = openmm_pme_parameters(params, box)
            force.setPMEParameters(pme["alpha_per_nm"], pme["nx"], pme["ny"], pme["nz"])
        elif elec.alpha is not None and elec.grid_spacing is not None:  # the model's own splitting and mesh
            pme = openmm_pme_parameters({**elec.to_json(), "r_cut": cutoff}, torch.tensor(box))
            force.setPMEParameters(pme["alpha_per_nm"], pme["nx"], pme["ny"], pme["nz"])
        else:
            force.setEwaldErrorTolerance(elec.accuracy)
        force.setUseDispersionCorrection(False)
    else:
        force.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    charge = dict(zip(atoms, (elec.charges[z] for z in numbers)))
    for i in range(n_particles):
        force.addParticle(charge.get(i, 0.0), 1.0, 0.0)
    return force


def add_mlmd_forces(
    model: str | Path | LoadedModel,
    topology: app.Topology,
    system: openmm.System,
    atoms: Optional[Iterable[int]] = None,
    forceGroup: int = 0,
    electrostatics: Optional[str] = None,
    precision: Optional[str] = None,
    periodic: Optional[bool] = None,
    tune_electrostatics: bool = False,
    positions: Any = None,
) -> list[openmm.Force]:
    """Add the model (and, with ``electrostatics='engine'``, OpenMM's PME on its charges) to ``system``.

    Returns the forces added. ``atoms``: indices of the ML atoms (None: all). ``tune_electrostatics``: choose the
    Ewald/PME parameters for the structure's own charges and box (as the ASE calculator's option of that name):
    OpenMM's PME for 'engine', the model's own terms (a tuned copy) for 'model'. Predicted charges depend on the
    positions: tuning them needs ``positions`` (all the Topology's particles; a Quantity, or numbers in nm).
    Without it the accuracy is checked once: here for fixed charges, at the first evaluation of each Context for
    predicted ones.
    """
    loaded = _as_loaded(model)
    card = loaded.card
    engine = resolve_electrostatics(card, electrostatics) == "engine"
    # an empty System is allowed (openmm-ml's interpolation collects the forces in one): the Topology counts
    n_particles = topology.getNumAtoms()
    if system.getNumParticles() not in (0, n_particles):
        raise OpenMMSetupError(
            f"the Topology has {n_particles} atoms but the System {system.getNumParticles()} particles"
        )
    indices = list(range(n_particles)) if atoms is None else [int(i) for i in atoms]
    if len(set(indices)) != len(indices):
        raise OpenMMSetupError("the ML atom list contains duplicates")
    if not indices:
        raise OpenMMSetupError("no atoms selected for the model")
    numbers = _atomic_numbers(topology, indices, card)

    is_periodic = _system_is_periodic(topology, system, periodic)
    # what the file's own electrostatics needs (with electrostatics='engine', OpenMM sums them either way)
    if card.requires_periodic and not is_periodic and not engine:
        raise OpenMMSetupError(
            "this is a periodic model (it sums its electrostatics with Ewald/PME inside the model) but the System "
            "is not periodic: give the Topology box vectors (topology.setPeriodicBoxVectors) or use a periodic MM "
            "System"
        )
    if card.requires_non_periodic and is_periodic and not engine:
        raise OpenMMSetupError(
            "this model is for non-periodic systems only (its in-model electrostatics is the direct sum) but the "
            "System is periodic"
        )
    box = None
    if is_periodic:
        box = _box_angstrom(topology, system)
        if system.getNumForces() == 0 and topology.getPeriodicBoxVectors() is not None:
            system.setDefaultPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
        width = float(perpendicular_widths(box).min())
        if width < 2 * card.r_cut:
            raise OpenMMSetupError(
                f"periodic box too small for the model: its smallest width is {width:.4f} Å, less than twice "
                f"the cutoff (2 × {card.r_cut} Å = {2 * card.r_cut} Å); use a larger box (replicate it)"
            )

    elec = card.long_range.electrostatics
    if elec is not None and is_periodic and box is not None and elec.mode == "fixed" and not tune_electrostatics:
        # once per System: the promised force accuracy for this structure's own charges and cell (predicted
        # charges are known only with the positions: the bridge checks them at its first evaluation)
        check_accuracy(elec.to_json(), _fixed_charges(elec, numbers), box, fix=FIX_OPENMM)
    subset = None if indices == list(range(n_particles)) else indices
    tune_to = None
    if tune_electrostatics and elec is not None and is_periodic and box is not None and not engine:
        tune_to = (_structure_charges(loaded, elec, numbers, indices, box, positions), torch.tensor(box))
    bridge = build_bridge(loaded, numbers, subset, is_periodic, precision, short_range_only=engine,
                          check_predicted=tune_to is None, tune_to=tune_to)
    added: list[openmm.Force] = [_torch_force(bridge, is_periodic)]
    if engine and elec is not None:
        added.append(_engine_electrostatics(n_particles, indices, numbers, elec, is_periodic, box,
                                            tune_electrostatics))
    for force in added:
        force.setForceGroup(forceGroup)
        system.addForce(force)
    return added
