"""Packaging to one TorchScript file with metadata, and loading it back safely."""
