"""The D3 three-body (ATM) term on a graph an engine built (LAMMPS over MPI): each triple once over all ranks,
the same energy, forces and virial as D3Dispersion.atomic_energies on the whole system.

The graph holds every local atom's edges out to the three-body cutoff (ghosts to that cutoff), and the
coordination numbers of every node (the ghosts' from their owners, as dispersion_graph's split path). A triple
(a; b, c) is formed at its vertex of lowest atom ID from two of that atom's own edges (mlmd.model.dispersion_atm:
the third side is the difference of their vectors), so it is found on the one rank that owns that vertex; periodic
images of one atom share its ID (weight 1/k as in the whole-system sum). Its energy goes in thirds to its three
nodes (ghost nodes' thirds belong to their owners, which is where an engine's per-atom energies add them).

Derivatives: by hand (dispersion_atm), attached as one zero-valued term on the edge vectors and on the engine's
CN leaf, whose gradient the engine sends back to the owners of ghost nodes. Only the sum of the returned energies
differentiates exactly. Units as in D3Dispersion: bohr and hartree inside, Å and eV outside.
"""

from typing import List

import torch

from mlmd.model.dispersion_atm import c6_inputs, directed_three_body
from mlmd.model.dispersion_two_body import weights_and_slopes


def graph_three_body(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, cn: torch.Tensor,
    atom_ids: torch.Tensor, tables: List[torch.Tensor], settings: List[float], chunk: int, dense_max: int,
) -> torch.Tensor:
    """ATM energies [n_nodes] (eV) of the triples whose lowest-ID vertex is a local node.

    species, atom_ids, cn [n_nodes]; edge_index [2, E], vectors [E, 3] (Å): every local node's edges out to the
    three-body cutoff at least (other edges are ignored; an edge's reverse may be listed too). tables: ref_cn,
    ref_valid (as floats), ref_c6, r0_atm (D3Dispersion's buffers); settings: bohr, three-body cutoff (bohr),
    weight factor, s9, alp, hartree (eV)."""
    ref_cn, ref_valid, ref_c6, r0_atm = tables
    bohr, cutoff3, weight_factor, s9, alp, hartree = settings
    if cn.shape[0] != species.shape[0] or atom_ids.shape[0] != species.shape[0]:
        raise ValueError("cn and atom_ids must have one row per node (" + str(species.shape[0]) + "), got "
                         + str(cn.shape[0]) + " and " + str(atom_ids.shape[0]))
    n = species.shape[0]
    src, dst = edge_index[0], edge_index[1]
    cut2 = cutoff3 * cutoff3
    with torch.no_grad():
        vec = vectors.detach() / bohr
        r2 = (vec * vec).sum(1)
        mine = (src < n_local) & (r2 <= cut2) & (atom_ids.index_select(0, dst) >= atom_ids.index_select(0, src))
        keep = torch.nonzero(mine).squeeze(1)
        keep = keep.index_select(0, torch.argsort(src.index_select(0, keep), stable=True))
        w, dw = weights_and_slopes(species, cn.detach(), ref_cn, ref_valid, weight_factor)
        u, c6_matrix = c6_inputs(w, species, ref_c6, dense_max)
        atomic, grad_v, grad_w = directed_three_body(
            src.index_select(0, keep), dst.index_select(0, keep), vec.index_select(0, keep), atom_ids, species, u, w,
            c6_matrix, n, r0_atm, s9, alp, cut2, chunk, True)
        grad_edges = torch.zeros_like(vec).index_add_(0, keep, grad_v) / bohr  # d(sum)/d(edge vector in Å)
        de_dcn = (grad_w * dw).sum(1)
    # one zero-valued term with the derivatives of the sum, on the first node (weight 1, no rounding)
    linear = (grad_edges * (vectors - vectors.detach())).sum() + (de_dcn * (cn - cn.detach())).sum()
    energies = atomic
    if n > 0:
        energies = torch.cat([atomic[:1] + linear, atomic[1:]])
    return energies * hartree
