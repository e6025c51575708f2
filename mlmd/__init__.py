"""mlmd: E(3)-equivariant machine-learned interatomic potentials for OpenMM, LAMMPS and ASE."""

__version__ = "0.1.0"
# Bumped whenever the packaged-model contract changes; loaders refuse other formats.
MODEL_FORMAT_VERSION = 1

__all__ = ["__version__", "MODEL_FORMAT_VERSION"]
