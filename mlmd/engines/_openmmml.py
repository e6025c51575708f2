"""Old import path of the openmm-ml implementation, kept working: it lives in ``mlmd.engines.openmm.openmmml``."""

from mlmd.engines.openmm.openmmml import MLMDPotentialImpl

__all__ = ["MLMDPotentialImpl"]
