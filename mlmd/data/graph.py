"""Neighbour lists (vesin) and batching of structures into one disjoint graph."""

from __future__ import annotations

import numpy as np
import torch
from vesin_torch import NeighborList

from mlmd import keys as K
from mlmd.data.structures import Structure


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_cut: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list: edge_index [2, E] (centre i, neighbour j) and integer shifts [E, 3]."""
    nl = NeighborList(cutoff=float(r_cut), full_list=True)
    pbc_t = torch.as_tensor(np.asarray(pbc, dtype=bool))
    box = torch.as_tensor(np.where(np.asarray(pbc)[:, None], cell, 0.0) if pbc.any() else np.zeros((3, 3)))
    i, j, s = nl.compute(torch.as_tensor(positions, dtype=torch.float64), box.to(torch.float64), pbc_t, "ijS")
    return np.stack([i.numpy(), j.numpy()]).astype(np.int64), s.numpy().astype(np.float64)


class GraphCache:
    """Neighbour lists of a dataset computed once (positions do not move during training)."""

    def __init__(self, structures: list[Structure], r_cut: float) -> None:
        self.structures = structures
        self.r_cut = r_cut
        self.edges = [neighbor_list(s.positions, s.cell, s.pbc, r_cut) for s in structures]

    def __len__(self) -> int:
        return len(self.structures)

    def mean_num_neighbors(self) -> float:
        n_edges = sum(e[0].shape[1] for e in self.edges)
        n_atoms = sum(s.n_atoms for s in self.structures)
        return max(n_edges / max(n_atoms, 1), 1.0)


def collate(
    structures: list[Structure],
    edges: list[tuple[np.ndarray, np.ndarray]],
    z_to_species: np.ndarray,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    pos, cells, species, numbers, eidx, shifts, batch = [], [], [], [], [], [], []
    energy, forces, stress, has_stress, has_forces, n_atoms = [], [], [], [], [], []
    pbc, total_charge, charges, has_charges = [], [], [], []
    offset = 0
    for b, (s, (ei, sh)) in enumerate(zip(structures, edges)):
        pos.append(s.positions)
        cells.append(s.cell)
        numbers.append(s.numbers)
        species.append(z_to_species[s.numbers])
        eidx.append(ei + offset)
        shifts.append(sh)
        batch.append(np.full(s.n_atoms, b))
        n_atoms.append(s.n_atoms)
        energy.append(s.energy if s.energy is not None else np.nan)
        forces.append(s.forces if s.forces is not None else np.full((s.n_atoms, 3), np.nan))
        has_forces.append(np.full(s.n_atoms, s.forces is not None))
        stress.append(s.stress if s.stress is not None else np.zeros((3, 3)))
        has_stress.append(s.stress is not None)
        pbc.append(np.asarray(s.pbc, dtype=bool))
        total_charge.append(float(s.total_charge))
        charges.append(s.charges if s.charges is not None else np.full(s.n_atoms, np.nan))
        has_charges.append(np.full(s.n_atoms, s.charges is not None))
        offset += s.n_atoms
    t = lambda a, dt=dtype: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    return {
        K.POSITIONS: t(np.concatenate(pos)),
        K.CELL: t(np.stack(cells)),
        K.NUMBERS: t(np.concatenate(numbers), torch.long),
        K.SPECIES: t(np.concatenate(species), torch.long),
        K.EDGE_INDEX: t(np.concatenate(eidx, axis=1), torch.long),
        K.EDGE_SHIFTS: t(np.concatenate(shifts)),
        K.BATCH: t(np.concatenate(batch), torch.long),
        K.N_ATOMS: t(n_atoms, torch.long),
        K.ENERGY: t(energy),
        K.FORCES: t(np.concatenate(forces)),
        "has_forces": t(np.concatenate(has_forces), torch.bool),
        K.STRESS: t(np.stack(stress)),
        "has_stress": t(has_stress, torch.bool),
        K.PBC: t(np.stack(pbc), torch.bool),
        K.TOTAL_CHARGE: t(total_charge),
        K.CHARGES: t(np.concatenate(charges)),
        "has_charges": t(np.concatenate(has_charges), torch.bool),
    }
