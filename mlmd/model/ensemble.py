"""A committee (deep ensemble) of short-range potentials evaluated on one graph.

The energy is the committee mean; the spread of the members is the epistemic uncertainty: members trained
from different initial weights and data orders agree where the training data constrains them and disagree
away from it. All members share the species list and cutoff so that one graph serves them all.
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn


class EnsemblePotential(nn.Module):
    def __init__(self, members: List[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if list(m.atomic_numbers) != list(first.atomic_numbers) or float(m.r_cut) != float(first.r_cut):
                raise ValueError(
                    f"ensemble member {k} has elements {m.atomic_numbers} and r_cut {m.r_cut}; member 0 has "
                    f"{first.atomic_numbers} and {first.r_cut}: members must share elements and cutoff"
                )
        self.members = nn.ModuleList(members)
        self.n_members: int = len(members)
        self.atomic_numbers: List[int] = list(first.atomic_numbers)
        self.r_cut: float = float(first.r_cut)
        n_layers = max(int(m.hparams.get("n_layers", 2)) for m in members)
        self.hparams: Dict[str, Any] = {
            "kind": "ensemble",
            "atomic_numbers": self.atomic_numbers,
            "r_cut": self.r_cut,
            "n_layers": n_layers,
            "members": [dict(m.hparams) for m in members],
        }

    def member_energies(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> torch.Tensor:
        """Per-atom energies of every member: [n_members, n_nodes] (n_mirrored: see AtomicEnergyModel.forward)."""
        out: List[torch.Tensor] = []
        for m in self.members:
            out.append(m(species, edge_index, edge_vectors, n_mirrored))
        return torch.stack(out)

    def member_energy(
        self, member: int, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
        n_mirrored: int = 0,
    ) -> torch.Tensor:
        """Per-atom energies of one member: [n_nodes]. A backward pass from them runs through that member only,
        where one from a row of member_energies() runs through every member (with zero gradients)."""
        out: Optional[torch.Tensor] = None
        for k, m in enumerate(self.members):  # TorchScript indexes a ModuleList with constants only
            if k == member:
                out = m(species, edge_index, edge_vectors, n_mirrored)
        if out is None:
            raise ValueError("no committee member " + str(member) + " (members 0.." + str(self.n_members - 1) + ")")
        return out

    # ---- layer by layer, one member at a time (see ShortRangePotential.layer_interaction)

    def layer_widths(self, member: int) -> List[int]:
        out: List[int] = []
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_widths(0)
        self._check_member(member)
        return out

    def layer_embed(self, member: int, species: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(0)
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_embed(0, species)
        self._check_member(member)
        return out

    def layer_edges(
        self, member: int, edge_vectors: torch.Tensor, n_mirrored: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        out = (torch.zeros(0), torch.zeros(0))
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_edges(0, edge_vectors, n_mirrored)
        self._check_member(member)
        return out

    def layer_interaction(
        self, member: int, layer: int, h: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
        sh: torch.Tensor, radial: torch.Tensor, n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        out = torch.zeros(0)
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_interaction(0, layer, h, species, edge_index, sh, radial, n_mirrored, n_out)
        self._check_member(member)
        return out

    def layer_message_widths(self, member: int) -> List[int]:
        out: List[int] = []
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_message_widths(0)
        self._check_member(member)
        return out

    def layer_messages(
        self, member: int, layer: int, h: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor,
        radial: torch.Tensor, n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        out = torch.zeros(0)
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_messages(0, layer, h, edge_index, sh, radial, n_mirrored, n_out)
        self._check_member(member)
        return out

    def layer_update(
        self, member: int, layer: int, h: torch.Tensor, messages: torch.Tensor, species: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros(0)
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_update(0, layer, h, messages, species)
        self._check_member(member)
        return out

    def layer_readout(self, member: int, h: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(0)
        for k, m in enumerate(self.members):
            if k == member:
                out = m.layer_readout(0, h, species)
        self._check_member(member)
        return out

    def _check_member(self, member: int) -> None:
        if member < 0 or member >= self.n_members:
            raise ValueError("no committee member " + str(member) + " (members 0.." + str(self.n_members - 1) + ")")

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> torch.Tensor:
        """Committee-mean per-atom energies: what MD runs on."""
        return self.member_energies(species, edge_index, edge_vectors, n_mirrored).mean(0)


def committee_spread(values: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the first (member) axis, population form (1/K): the committee disagreement."""
    mean = values.mean(0, keepdim=True)
    return ((values - mean) ** 2).mean(0).sqrt()
