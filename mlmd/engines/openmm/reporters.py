"""OpenMM reporters: ``UncertaintyReporter``, the committee spread of an ensemble model every N steps;
``DomainReporter``, the training-domain check of a model's card (mlmd.engines.domain) every N steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import openmm
from openmm import app, unit

from mlmd import keys as K
from mlmd.engines.openmm.model import OpenMMSetupError


class UncertaintyReporter:
    """OpenMM reporter: the committee spread of a packaged ensemble model every `reportInterval` steps.

    Evaluates the model file on the current positions (its own copy, outside the TorchForce: the cost is one
    extra model call per report), writes step, energy_std and per-atom force spread through an
    :class:`mlmd.uncertainty.UncertaintyGate` (CSV log, extxyz harvest of frames above threshold, optional
    stop). `atoms`: indices of the ML particles (default: all, in order).

    >>> simulation.reporters.append(UncertaintyReporter("committee.pt", 100, topology, log="unc.csv",
    ...                                                 threshold=0.3, harvest="uncertain.xyz"))
    """

    def __init__(
        self, model: str | Path, reportInterval: int, topology: app.Topology,  # noqa: N803 (OpenMM naming)
        atoms: Optional[list[int]] = None, threshold: float = float("inf"), harvest: str | Path | None = None,
        stop: bool = False, log: str | Path | None = None, timestep_fs: float = 0.5,
    ) -> None:
        from mlmd.deploy.load import load_model
        from mlmd.uncertainty import UncertaintyGate

        self.module, self.card = load_model(model)
        if not self.card.has_uncertainty:
            raise OpenMMSetupError(f"{model} is not a committee model: train it with `mlmd train --ensemble K`")
        self.interval = int(reportInterval)
        all_atoms = list(topology.atoms())
        self.indices = list(range(len(all_atoms))) if atoms is None else [int(i) for i in atoms]
        self.numbers = np.array([all_atoms[i].element.atomic_number for i in self.indices])
        self.periodic = topology.getPeriodicBoxVectors() is not None
        self.gate = UncertaintyGate(threshold, harvest, stop, log, timestep_fs)
        self.last: dict[str, Any] = {}

    def describeNextReport(self, simulation: app.Simulation) -> dict[str, Any]:  # noqa: N802
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions"]}

    def report(self, simulation: app.Simulation, state: openmm.State) -> None:
        from ase import Atoms

        from mlmd.uncertainty import committee_uncertainty

        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[self.indices]
        atoms = Atoms(self.numbers, positions=pos, pbc=self.periodic)
        if self.periodic:
            atoms.cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        self.last = committee_uncertainty(self.module, self.card, atoms)
        self.gate.check(simulation.currentStep, atoms, float(self.last[K.ENERGY_STD]), self.last[K.FORCES_STD])


class DomainReporter:
    """OpenMM reporter: warns once (or, mode "stop", raises OutOfDomainError) when the configuration leaves the
    training domain the model card records (mlmd.engines.domain), naming the step and the atoms (System
    particle indices). `atoms`: indices of the ML particles (default: all, in order); when other particles share
    the box (ML/MM), the volume per atom is not checked. Every `reportInterval` steps (default every step: the
    check costs one short-range neighbour search, well under 1% of an MD step of the model).

    >>> simulation.reporters.append(DomainReporter("model.pt", 1, topology))
    """

    def __init__(
        self, model: str | Path, reportInterval: int, topology: app.Topology,  # noqa: N803 (OpenMM naming)
        atoms: Optional[list[int]] = None, mode: str = "warn",
    ) -> None:
        from mlmd.deploy.load import read_card
        from mlmd.engines.domain import DomainMonitor

        self.monitor = DomainMonitor(read_card(model), mode)
        self.interval = max(1, int(reportInterval))
        all_atoms = list(topology.atoms())
        self.indices = np.arange(len(all_atoms)) if atoms is None else np.asarray(atoms, dtype=np.int64)
        self.numbers = np.array([all_atoms[i].element.atomic_number for i in self.indices])
        self.all_atoms = len(self.indices) == len(all_atoms)
        self.periodic = topology.getPeriodicBoxVectors() is not None

    def describeNextReport(self, simulation: app.Simulation) -> dict[str, Any]:  # noqa: N802
        if not self.monitor.active or self.monitor.found is not None:  # nothing more to watch
            return {"steps": 0, "periodic": None, "include": []}
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions"]}

    def report(self, simulation: app.Simulation, state: openmm.State) -> None:
        if not self.monitor.active or self.monitor.found is not None:
            return
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[self.indices]
        cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom) if self.periodic else None
        pbc = np.full(3, self.periodic)
        self.monitor.check(f"OpenMM MD step {simulation.currentStep}", np.asarray(pos), self.numbers,
                           None if cell is None else np.asarray(cell), pbc, self.all_atoms)
