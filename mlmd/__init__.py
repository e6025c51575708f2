"""mlmd: E(3)-equivariant machine-learned interatomic potentials for OpenMM, LAMMPS and ASE."""

__version__ = "0.1.0"
# Bumped whenever the packaged-model contract changes; loaders refuse other formats.
MODEL_FORMAT_VERSION = 1

__all__ = ["__version__", "MODEL_FORMAT_VERSION"]

# a clone's .venv links an environment shared by every clone: refuse to run another clone's code (mlmd/_clone.py)
from mlmd._clone import check_clone as _check_clone  # noqa: E402

_check_clone()
