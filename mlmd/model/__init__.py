"""Potentials: cutoffs and radial bases, equivariant layers, the composed potential."""
