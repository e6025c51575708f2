"""Thin adapters over the packaged model: ASE, OpenMM, LAMMPS. They never import the model code."""
