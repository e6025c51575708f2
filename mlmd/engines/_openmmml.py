"""openmm-ml implementation of the "mlmd" potential (loaded lazily by ``MLMDPotentialImplFactory``).

Kept apart from ``mlmd.engines.openmm`` because openmm-ml imports that module while it registers its entry
points; this one subclasses openmm-ml's classes and so may only be imported once openmmml is importable.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import openmm
from openmm import app
from openmmml.mlpotential import MLPotentialImpl

from mlmd.deploy.load import load_model
from mlmd.engines.openmm import ELECTROSTATICS_OPTIONS, ModelSpec, OpenMMSetupError, add_mlmd_forces


class MLMDPotentialImpl(MLPotentialImpl):
    """A packaged mlmd model (``modelPath``) as an openmm-ml potential; see ``mlmd.engines.openmm``."""

    def __init__(
        self, name: str, modelPath: str | Path, electrostatics: str = "model", precision: Optional[str] = None  # noqa: N803
    ) -> None:
        if electrostatics not in ELECTROSTATICS_OPTIONS:
            raise OpenMMSetupError(f"electrostatics must be one of {ELECTROSTATICS_OPTIONS}, not {electrostatics!r}")
        self.name = name
        self.modelPath = str(modelPath)
        self.electrostatics = electrostatics
        self.precision = precision
        _, meta = load_model(self.modelPath)
        self.spec = ModelSpec.from_metadata(meta)
        if electrostatics == "engine" and self.spec.electrostatics is None:
            raise OpenMMSetupError("electrostatics='engine' but the model records no electrostatics (short-range only)")

    def addForces(  # noqa: N802
        self,
        topology: app.Topology,
        system: openmm.System,
        atoms: Optional[Iterable[int]],
        forceGroup: int,  # noqa: N803
        periodic: Optional[bool] = None,
        **args: Any,
    ) -> None:
        add_mlmd_forces(
            self.modelPath, topology, system, atoms, forceGroup, electrostatics=self.electrostatics,
            precision=args.get("precision", self.precision), periodic=periodic,
        )

    def getMLLongRange(self) -> bool:  # noqa: N802
        """True when the ML side computes long-range electrostatics (in the model, or OpenMM PME on its
        charges): mechanical embedding then subtracts the MM force field's ML–ML periodic-image Coulomb."""
        return self.spec.electrostatics is not None
