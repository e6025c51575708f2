"""Potentials: cutoffs and radial bases, equivariant layers, the composed potential, long-range terms, and
the energy assembly (assembly.py) that turns them into energies, charges, forces and stress for both the trainer
and the packaged model."""
