"""The package list: mlmd's own packages, plus the two data packages that pyproject's package-dir maps from
inputs/ and plugins/lammps/ (package discovery cannot list folders outside mlmd/; everything else is in
pyproject.toml)."""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["mlmd", "mlmd.*"]) + ["mlmd._share.inputs", "mlmd._share.lammps"])
