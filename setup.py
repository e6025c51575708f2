"""The package list: mlmd's own packages, plus the data packages that pyproject's package-dir maps from inputs/
and plugins/lammps/ (package discovery cannot list folders outside mlmd/; everything else is in pyproject.toml).
Each first-level folder of inputs/ is listed too, so that setuptools knows its files are package data."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

inputs = [f"mlmd._share.inputs.{d.name}" for d in sorted(Path(__file__).parent.joinpath("inputs").iterdir())
          if d.is_dir() and d.name.isidentifier()]
setup(packages=find_namespace_packages(include=["mlmd", "mlmd.*"]) + ["mlmd._share.lammps", "mlmd._share.inputs",
                                                                     *inputs])
