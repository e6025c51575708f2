"""openmm-ml implementation of the "mlmd" potential (loaded lazily by ``MLMDPotentialImplFactory``).

Kept apart from ``mlmd.engines.openmm.potential`` because openmm-ml imports that module while it registers its
entry points; this one subclasses openmm-ml's classes and so may only be imported once openmmml is importable.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import openmm
from openmm import app
from openmmml.mlpotential import MLPotentialImpl

from mlmd.engines.openmm.model import INTERPOLATION_UNAVAILABLE, LoadedModel, OpenMMSetupError, resolve_electrostatics
from mlmd.engines.openmm.system import add_mlmd_forces


class MLMDPotentialImpl(MLPotentialImpl):
    """A packaged mlmd model (``modelPath``) as an openmm-ml potential; see ``mlmd.engines.openmm``."""

    def __init__(
        self,
        name: str,
        modelPath: str | Path,  # noqa: N803
        electrostatics: Optional[str] = None,
        precision: Optional[str] = None,
        tune_electrostatics: bool = False,
    ) -> None:
        self.name = name
        self.tune_electrostatics = bool(tune_electrostatics)
        self.modelPath = str(modelPath)
        self.precision = precision
        self.model = LoadedModel.read(self.modelPath)  # read and verified once; fails here on a bad file
        self.card = self.model.card
        self.electrostatics = resolve_electrostatics(self.card, electrostatics)

    def addForces(  # noqa: N802
        self,
        topology: app.Topology,
        system: openmm.System,
        atoms: Optional[Iterable[int]],
        forceGroup: int,  # noqa: N803
        periodic: Optional[bool] = None,
        **args: Any,
    ) -> None:
        if system.getNumParticles() == 0 and topology.getNumAtoms() > 0:
            # openmm-ml's interpolation (createMixedSystem(interpolate=True)) collects the forces in an empty
            # System and deep-copies them, through XmlSerializer: that crashes the process with openmmtorch 1.5
            raise OpenMMSetupError(INTERPOLATION_UNAVAILABLE)
        add_mlmd_forces(
            self.model, topology, system, atoms, forceGroup, electrostatics=self.electrostatics,
            precision=args.get("precision", self.precision), periodic=periodic,
            tune_electrostatics=bool(args.get("tune_electrostatics", self.tune_electrostatics)),
            positions=args.get("positions"),
        )

    def getMLLongRange(self) -> bool:  # noqa: N802
        """True when the ML side computes long-range electrostatics (in the model, or OpenMM PME on its
        charges): mechanical embedding then subtracts the MM force field's ML–ML periodic-image Coulomb."""
        return self.card.has_electrostatics
