"""What every short-range potential shares: species list, cutoff, per-species energy shift and scale.

E_i = scale * eps_i + shift[species_i], with eps_i from the subclass's ``network`` on the graph
(species, edge_index, edge_vectors). Subclasses set ``network`` and ``hparams`` (their constructor arguments,
from which ``potential_from_hparams`` rebuilds them).
"""

from typing import List

import torch
from ase.data import chemical_symbols
from torch import nn


class AtomicEnergyModel(nn.Module):
    __jit_unused_properties__ = ["symbols"]

    def __init__(self, atomic_numbers: List[int], r_cut: float) -> None:
        super().__init__()
        if sorted(set(atomic_numbers)) != sorted(atomic_numbers):
            raise ValueError("atomic_numbers must be unique")
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        self.r_cut = float(r_cut)
        self.hparams = {}  # filled by the subclass
        self.register_buffer("shifts", torch.zeros(len(self.atomic_numbers)))
        self.register_buffer("scale", torch.ones(()))

    @property
    def symbols(self) -> List[str]:
        return [chemical_symbols[z] for z in self.atomic_numbers]

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> torch.Tensor:
        """Per-atom energies (eV) of every node of the graph (a full list; n_mirrored > 0: its first n_mirrored
        edges are followed by their reverses, in the same order, which a network may use to save work)."""
        eps = self.network(species, edge_index, edge_vectors, n_mirrored)
        return eps * self.scale + self.shifts[species]
