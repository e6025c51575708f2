"""The packaged model as the OpenMM adapter reads it: the file and its card (``LoadedModel``), the setup error,
and what the card allows here (``electrostatics`` by the model or by OpenMM, the precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from mlmd.deploy.card import ModelCard

ELECTROSTATICS_OPTIONS = ("model", "engine")
INTERPOLATION_UNAVAILABLE = (
    "interpolate=True is not available: openmm-ml's interpolation deep-copies the forces through "
    "XmlSerializer, and deserializing a TorchForce crashes the process with openmmtorch 1.5 (segmentation fault)"
)


class OpenMMSetupError(ValueError):
    """A Topology/System that the model cannot serve: unknown element, periodicity or box mismatch."""





@dataclass(frozen=True)
class LoadedModel:
    """A packaged model read once (checksum verified): the module and its card."""

    path: Path
    module: torch.jit.ScriptModule
    card: ModelCard

    @classmethod
    def read(cls, path: str | Path) -> LoadedModel:
        from mlmd.deploy.load import load_model
        from mlmd.engines.allocator import keep_freed_memory

        keep_freed_memory()  # no page faults on every step (mlmd.engines.allocator)
        module, card = load_model(path)
        return cls(Path(path), module, card)


def _as_loaded(model: str | Path | LoadedModel) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else LoadedModel.read(model)



def resolve_electrostatics(card: ModelCard, requested: Optional[str]) -> str:
    """"model" or "engine" for this model (see the module docstring); a clear error for an impossible choice."""
    if requested is not None and requested not in ELECTROSTATICS_OPTIONS:
        raise OpenMMSetupError(f"electrostatics must be one of {ELECTROSTATICS_OPTIONS} or None, not {requested!r}")
    if not card.has_electrostatics:
        if requested == "engine":
            raise OpenMMSetupError("electrostatics='engine', but the model records no electrostatics")
        return "model"
    if requested == "engine":
        card.check_fixed_charges(
            "electrostatics='engine' (OpenMM's NonbondedForce PME)", "it holds fixed per-particle charges",
            "Use electrostatics='model' (the default), which sums Ewald/PME on the predicted charges inside the "
            "model", error=OpenMMSetupError,
        )
        if not card.has_local_graph:
            raise OpenMMSetupError("electrostatics='engine' needs the model's local_energies entry, which this file "
                                   "lacks: use electrostatics='model'")
    return requested or "model"


def _torch_dtype(card: ModelCard, precision: Optional[str]) -> torch.dtype:
    if precision is None:
        return getattr(torch, card.dtype)
    table = {"single": torch.float32, "double": torch.float64, "float32": torch.float32, "float64": torch.float64}
    if precision not in table:
        raise OpenMMSetupError(f"precision must be 'single', 'double' or None (the model's own), not {precision!r}")
    return table[precision]
