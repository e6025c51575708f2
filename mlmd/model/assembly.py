"""The energy assembly: E = E_short + E_elec(q) + E_long, with forces and stress by autograd. TorchScript-compatible.

One module, used by the trainer (batches of structures, the graph from the data pipeline) and by the packaged
model (one structure, the graph from its own neighbour list; mlmd.deploy.packaged subclasses it and adds only the
neighbour list, the input checks and the entry points). So the numbers training fits are the numbers served.

Terms: the short-range potential's per-atom energies; with a PredictedCoulombTerm, the charges its charge head
predicts (conserving each structure's total charge) and their Coulomb energy; then every long-range term with
fixed parameters (fixed-charge Ewald/PME, D3), (positions, cell, numbers, pbc) -> per-atom energies. The trainer
builds its assembly without the fixed terms: they are subtracted from its labels (mlmd.model.longrange).

The trainer calls batch_properties. The steps inside are separate methods because the packaged model checks the
edge vectors between them: _strained_edges (strain leaf and edge vectors r_ij = r_j - r_i + S_ij @ cell of the
strained structure), then _properties_of (energies, charges, and by autograd forces = -dE/dR and stress =
(1/V) dE/d(strain)). They are private so that a packaged file lists only its entry points as public methods.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from mlmd import keys as K
from mlmd.model.longrange import CoulombTerm, split_terms
from mlmd.model.predicted_charges import PredictedCoulombTerm
from mlmd.model.properties import derivatives, edge_vectors, strain_inputs


def fixed_charge_table(terms: nn.ModuleList) -> torch.Tensor:
    """The per-element charge table [119] of the fixed-charge Coulomb term, NaN without one. Terms that repackage
    takes over compiled from an older file are no CoulombTerm instances: their charge table is found by name."""
    table = torch.full((119,), float("nan"), dtype=torch.float64)
    for t in terms:
        charges = getattr(t, "charges", None)
        if isinstance(t, CoulombTerm) or isinstance(getattr(charges, "table", None), torch.Tensor):
            table = charges.table.clone().to(torch.float64)
    return table


class EnergyAssembly(nn.Module):
    """A short-range potential plus long-range terms (predicted-charge Coulomb, fixed-charge Coulomb, D3)."""

    def __init__(self, potential: nn.Module, long_range: Optional[List[nn.Module]] = None) -> None:
        super().__init__()
        self.potential = potential
        # predicted-charge electrostatics take the charges the potential predicts, so they are kept apart
        terms = list(long_range or [])
        charge_term, fixed = split_terms(terms)
        self.charge_term: Optional[PredictedCoulombTerm] = charge_term
        # D3 terms that can also run on an engine's graph (graph_energies: this mlmd's DispersionTerm, compiled or
        # not) are kept apart for the packaged model's local_dispersion; D3 compiled by an older mlmd stays in
        # long_range
        self.long_range = nn.ModuleList([t for t in fixed if not hasattr(t, "graph_energies")])
        self.dispersion = nn.ModuleList([t for t in fixed if hasattr(t, "graph_energies")])
        self.has_long_range: bool = len(terms) > 0
        self.predicts_charges: bool = charge_term is not None
        # fixed per-element charges (NaN: none), so that fixed-charge models report their charges too
        table = fixed_charge_table(self.long_range)
        self.register_buffer("fixed_charge_table", table)
        self.has_fixed_charges: bool = not bool(torch.isnan(table).all())
        self.n_members: int = int(getattr(potential, "n_members", 1))
        if self.predicts_charges and self.n_members > 1:
            raise ValueError(
                "a committee of predicted-charge models is not supported: each member would predict its own "
                "charges and electrostatic energy; package the members one by one"
            )

    def _strained_edges(
        self, positions: torch.Tensor, cell: torch.Tensor, edge_index: torch.Tensor, edge_shifts: torch.Tensor,
        batch: torch.Tensor, n_structures: int, compute_forces: bool, compute_stress: bool,
    ) -> List[torch.Tensor]:
        """[positions leaf, strain leaf, strained positions, strained cells [B,3,3], edge vectors]."""
        leaf, strain, pos, box = strain_inputs(positions, cell, batch, n_structures, compute_forces, compute_stress)
        return [leaf, strain, pos, box, edge_vectors(pos, box, edge_index, edge_shifts, batch)]

    def _predicted_charges(
        self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, total_charge: torch.Tensor,
        batch: Optional[torch.Tensor], n_mirrored: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-atom short-range energies, charges summing to each structure's total_charge [B])."""
        charge_term = self.charge_term
        if charge_term is None:
            raise ValueError("this model does not predict charges")
        atomic, raw, softness = self.potential.energies_and_charges(species, edge_index, vectors, n_mirrored)
        return atomic, charge_term.conserve(raw, softness, total_charge, batch)

    def _fixed_terms(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor
    ) -> torch.Tensor:
        """Per-atom energies of the long-range terms with fixed parameters, one structure (cell [3,3], pbc [3])."""
        out = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        for term in self.long_range:
            out = out + term(positions, cell, numbers, pbc)
        for term in self.dispersion:
            out = out + term(positions, cell, numbers, pbc)
        return out

    def _energies(
        self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, positions: torch.Tensor,
        cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor, total_charge: torch.Tensor,
        batch: Optional[torch.Tensor], n_mirrored: int,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-atom energies of every term and the charges (predicted, fixed, or None without electrostatics).

        batch None: one structure (cell [3,3], pbc [3]); else cell [B,3,3], pbc [B,3], batch [N].
        total_charge [B]. n_mirrored: see AtomicEnergyModel.forward.
        """
        charges: Optional[torch.Tensor] = None
        charge_term = self.charge_term
        if charge_term is not None:
            atomic, charges = self._predicted_charges(species, edge_index, vectors, total_charge, batch, n_mirrored)
            if batch is None:
                atomic = atomic + charge_term(positions, cell, pbc, charges, float(total_charge[0]))
            else:
                atomic = atomic + charge_term.batch_energies(positions, cell, pbc, charges, batch, total_charge)
        else:
            atomic = self.potential(species, edge_index, vectors, n_mirrored)
            if self.has_fixed_charges:
                charges = self.fixed_charge_table[numbers].to(positions.dtype)
        if (len(self.long_range) > 0 or len(self.dispersion) > 0) and batch is not None:
            raise ValueError(
                "long-range terms with fixed parameters are evaluated one structure at a time (training subtracts "
                "them from the labels instead)"
            )
        for term in self.long_range:  # added one by one, as packaged files always did (same rounding)
            atomic = atomic + term(positions, cell, numbers, pbc)
        for term in self.dispersion:
            atomic = atomic + term(positions, cell, numbers, pbc)
        return atomic, charges

    def _properties_of(
        self, strained: List[torch.Tensor], cell: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
        numbers: torch.Tensor, pbc: torch.Tensor, total_charge: torch.Tensor, batch: Optional[torch.Tensor],
        n_structures: int, n_mirrored: int, compute_forces: bool, compute_stress: bool, create_graph: bool,
    ) -> dict[str, torch.Tensor]:
        """energy [B], atomic_energies [N], charges [N] (with electrostatics), forces [N,3], stress [B,3,3].

        strained: _strained_edges's list for the same flags; cell: the unstrained cells [B,3,3] (the volume).
        batch None: one structure (energy: the plain sum of the atoms' energies).
        """
        leaf, strain, pos, box, vec = strained[0], strained[1], strained[2], strained[3], strained[4]
        if batch is None:
            atomic, charges = self._energies(species, edge_index, vec, pos, box[0], numbers, pbc, total_charge,
                                            None, n_mirrored)
            energy = atomic.sum().unsqueeze(0)
        else:
            atomic, charges = self._energies(species, edge_index, vec, pos, box, numbers, pbc, total_charge, batch,
                                            n_mirrored)
            energy = torch.zeros(n_structures, dtype=atomic.dtype, device=atomic.device).index_add(0, batch, atomic)
        out: dict[str, torch.Tensor] = {"energy": energy, "atomic_energies": atomic}
        if charges is not None:
            out["charges"] = charges
        out.update(derivatives(energy, leaf, strain, cell, compute_forces, compute_stress, create_graph))
        return out

    @torch.jit.unused
    def batch_properties(
        self, batch: dict[str, torch.Tensor], compute_forces: bool, compute_stress: bool, create_graph: bool
    ) -> dict[str, torch.Tensor]:
        """_properties_of for a training batch (mlmd.data.graph.collate: a full neighbour list, cells [B,3,3])."""
        n_structures = int(batch[K.N_ATOMS].shape[0])
        strained = self._strained_edges(batch[K.POSITIONS], batch[K.CELL], batch[K.EDGE_INDEX], batch[K.EDGE_SHIFTS],
                                       batch[K.BATCH], n_structures, compute_forces, compute_stress)
        return self._properties_of(strained, batch[K.CELL], batch[K.SPECIES], batch[K.EDGE_INDEX], batch[K.NUMBERS],
                                  batch[K.PBC], batch[K.TOTAL_CHARGE], batch[K.BATCH], n_structures, 0,
                                  compute_forces, compute_stress, create_graph)

    def _committee_properties(
        self, strained: List[torch.Tensor], cell: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
        numbers: torch.Tensor, pbc: torch.Tensor, n_mirrored: int, compute_stress: bool,
    ) -> List[torch.Tensor]:
        """One structure, every committee member: [per-atom energies [K,N], forces [K,N,3], stress [K,3,3]
        (empty without compute_stress)]. The fixed long-range terms are shared by all members."""
        leaf, strain, pos, box, vec = strained[0], strained[1], strained[2], strained[3], strained[4]
        long_range = self._fixed_terms(pos, box[0], numbers, pbc)  # adds to each member, cancels in the spread
        atomic_k: List[torch.Tensor] = []
        forces: List[torch.Tensor] = []
        stresses: List[torch.Tensor] = []
        for k in range(self.n_members):
            # one member at a time: its backward pass then runs through that member only
            atomic = self.potential.member_energy(k, species, edge_index, vec, n_mirrored) + long_range
            d = derivatives(atomic.sum().unsqueeze(0), leaf, strain, cell, True, compute_stress, False,
                            k < self.n_members - 1)
            atomic_k.append(atomic.detach())
            forces.append(d["forces"].detach())
            if compute_stress:
                stresses.append(d["stress"][0].detach())
        stress = torch.stack(stresses) if compute_stress else torch.zeros(0, 3, 3, dtype=vec.dtype, device=vec.device)
        return [torch.stack(atomic_k), torch.stack(forces), stress]
