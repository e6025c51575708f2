"""Energy, forces (-dE/dR) and stress (strain derivative / volume), all by autograd. TorchScript-compatible.

Forces are never predicted directly: they are the exact negative gradient of the energy, so MD with them
conserves energy. The stress uses a symmetric-free strain eps applied to positions and cell alike:
sigma = (1/V) dE/d(eps), the ASE convention (negative under compression).
"""


from typing import Optional

import torch


def edge_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    edge_shifts: torch.Tensor,
    batch: torch.Tensor,
) -> torch.Tensor:
    """r_ij = r_j - r_i + S_ij @ cell (cell rows are lattice vectors; cell is [B, 3, 3])."""
    i = edge_index[0]
    j = edge_index[1]
    if cell.shape[0] == 1:  # one structure (every engine): no per-edge copy of the cell
        shift = torch.matmul(edge_shifts, cell[0])
    else:
        shift = torch.einsum("ek,ekl->el", edge_shifts, cell[batch[i]])
    return torch.index_select(positions, 0, j) - torch.index_select(positions, 0, i) + shift


def strain_inputs(
    positions: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, n_structures: int,
    compute_forces: bool, compute_stress: bool,
) -> list[torch.Tensor]:
    """[positions leaf, strain leaf, strained positions, strained cells] ready for the energy and autograd."""
    if compute_forces:
        positions = positions.detach().requires_grad_(True)
    strain = torch.zeros(n_structures, 3, 3, dtype=positions.dtype, device=positions.device)
    pos = positions
    box = cell
    if compute_stress:
        strain.requires_grad_(True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        pos = positions + torch.einsum("nk,nkl->nl", positions, sym[batch])
        box = cell + torch.bmm(cell, sym)
    return [positions, strain, pos, box]


def derivatives(
    energy: torch.Tensor, positions: torch.Tensor, strain: torch.Tensor, cell: torch.Tensor,
    compute_forces: bool, compute_stress: bool, create_graph: bool, retain_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """forces = -dE/dR; stress = (1/V) dE/d(strain) per structure (retain_graph: more derivatives follow)."""
    out: dict[str, torch.Tensor] = {}
    inputs: list[torch.Tensor] = []
    if compute_forces:
        inputs.append(positions)
    if compute_stress:
        inputs.append(strain)
    if len(inputs) == 0:
        return out
    grads = torch.autograd.grad(
        [energy.sum()], inputs, retain_graph=retain_graph or create_graph, create_graph=create_graph, allow_unused=True
    )
    k = 0
    if compute_forces:
        g: Optional[torch.Tensor] = grads[k]
        out["forces"] = -g if g is not None else torch.zeros_like(positions)
        k += 1
    if compute_stress:
        gs: Optional[torch.Tensor] = grads[k]
        volume = torch.abs(torch.linalg.det(cell))
        volume = torch.where(volume > 0, volume, torch.ones_like(volume))
        if gs is None:
            gs = torch.zeros_like(strain)
        out["stress"] = gs / volume[:, None, None]
    return out
