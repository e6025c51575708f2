"""The public potential: ``MLMDPotential`` (the openmm-ml ``MLPotential`` API) and the factory openmm-ml's
``openmmml.potentials`` entry point names (``MLMDPotentialImplFactory``). openmm-ml imports this module while
it loads its entry points, so openmmml is imported only lazily here (the implementation is in
``mlmd.engines.openmm.openmmml``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import openmm
from openmm import app

from mlmd.deploy.card import ModelCard
from mlmd.engines.openmm.model import INTERPOLATION_UNAVAILABLE, OpenMMSetupError


class MLMDPotentialImplFactory:
    """openmm-ml factory for ``MLPotential("mlmd", modelPath=..., electrostatics=None, precision=None)``.

    Registered through the ``openmmml.potentials`` entry point. It is duck-typed (openmm-ml only calls
    ``createImpl``) rather than a subclass of ``openmmml.mlpotential.MLPotentialImplFactory``: openmm-ml imports
    this module while loading its entry points, so importing openmmml here would be circular.
    """

    def createImpl(self, name: str, modelPath: str | Path | None = None, **args: Any) -> Any:  # noqa: N802
        from mlmd.engines._openmmml import MLMDPotentialImpl

        if modelPath is None:
            raise OpenMMSetupError('MLPotential("mlmd") needs modelPath="model.pt" (a packaged mlmd model)')
        return MLMDPotentialImpl(name, modelPath, **args)


def _register_with_openmmml() -> Any:
    from openmmml import MLPotential

    if "mlmd" not in MLPotential._implFactories:  # running from a checkout that was not pip-installed
        MLPotential.registerImplFactory("mlmd", MLMDPotentialImplFactory())
    return MLPotential


class MLMDPotential:
    """An mlmd model file as an OpenMM potential (the openmm-ml ``MLPotential("mlmd", ...)`` API).

    ``electrostatics``: "model" (the file's own long-range terms), "engine" (OpenMM PME on the model's
    fixed charges) or None (what the file supports); ``precision``: None (the model's dtype), "single" or
    "double"; ``tune_electrostatics``: Ewald/PME parameters chosen for the structure's own charges and box
    (``add_mlmd_forces``), else the model's, with the accuracy checked once.
    """

    def __init__(
        self, model: str | Path, electrostatics: Optional[str] = None, precision: Optional[str] = None,
        tune_electrostatics: bool = False,
    ) -> None:
        self.path = Path(model)
        ml_potential = _register_with_openmmml()
        self._potential = ml_potential("mlmd", modelPath=str(self.path), electrostatics=electrostatics,
                                       precision=precision, tune_electrostatics=tune_electrostatics)
        impl = self._potential._impl
        self.card: ModelCard = impl.model.card
        self.electrostatics: str = impl.electrostatics

    @property
    def mlpotential(self) -> Any:
        """The underlying ``openmmml.MLPotential``."""
        return self._potential

    def createSystem(self, topology: app.Topology, removeCMMotion: bool = True, **args: Any) -> openmm.System:  # noqa: N802
        """A System where the model computes every interaction (masses from the Topology's elements)."""
        return self._potential.createSystem(topology, removeCMMotion=removeCMMotion, **args)

    def addForces(  # noqa: N802
        self, topology: app.Topology, system: openmm.System, atoms: Optional[Iterable[int]] = None,
        forceGroup: int = 0, **args: Any,
    ) -> None:
        """Add the model's forces for ``atoms`` (None: all) to an existing System."""
        self._potential._impl.addForces(topology, system, None if atoms is None else list(atoms), forceGroup, **args)

    def createMixedSystem(  # noqa: N802
        self, topology: app.Topology, system: openmm.System, atoms: Iterable[int], **args: Any
    ) -> openmm.System:
        """ML/MM by mechanical embedding (openmm-ml's): the model replaces the interactions among ``atoms``
        (their MM bonds, angles, torsions, constraints and mutual nonbonded terms are removed); the ML–MM
        coupling stays with the MM force field's nonbonded terms. ``interpolate=True`` is refused (see
        ``INTERPOLATION_UNAVAILABLE``)."""
        if args.get("interpolate"):
            raise OpenMMSetupError(INTERPOLATION_UNAVAILABLE)
        return self._potential.createMixedSystem(topology, system, list(atoms), **args)
