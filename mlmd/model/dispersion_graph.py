"""D3(BJ) on a graph an engine built (LAMMPS over MPI): the two-body energies of a rank's local atoms and the
tail correction from every rank's sums, the same numbers as D3Dispersion.atomic_energies on the whole system.

The graph is a full neighbour list out to max(cutoff, cutoff_cn): edges i -> j with vectors x_j - x_i (Å), nodes
that may be ghost atoms or fold periodic images onto local atoms. A node's coordination number is the sum over
its own edges, so every node within ``cutoff`` of a local atom must be a centre with all its edges (ghosts to
cutoff + cutoff_cn). A pair's energy goes half to each end as in atomic_energies(); the rank that owns the other
end counts the other half from its own copy of the pair. With ``n_mirrored`` > 0 the first n_mirrored edges are
pairs whose reverses follow in the same order (mlmd_graph.cpp's mirror()): each such pair is computed once and
counts for both ends (CN, and energy where an end is local); the reverses are not read.

Split at the coordination numbers (graph_cn, then graph_two_body_given_cn): an engine that can send per-atom
values between ranks computes the CN of its local atoms only, copies them to the ghost copies on the other ranks,
and evaluates the pairs with a local end given every node's CN; the gradient with respect to the ghosts' CN goes
back to their owners, which take it through dCN/d(edge vectors) of their own edges. Ghosts then reach
max(cutoff, cutoff_cn) instead of cutoff + cutoff_cn.

Tail correction: E_tail = -(1/2V) sum_ij C6_ij I_{s_i s_j} = -(1/2V) sum_st W_s^T (C6ref_st I_st) W_t is
quadratic in the per-species sums W_s of the CN weights over every atom of the cell. graph_tail gives each local
atom its share -(1/2V) sum_t I_{s_i t} C6_i(W_t) given the summed W, with the slope through the atom's own
weights doubled (2 w - w.detach(): same value), so that the gradient of the sum over every rank's atoms is the
exact one. Units as in D3Dispersion: bohr and hartree inside.
"""

from typing import List, Tuple

import torch

from mlmd.model.dispersion_pairs import cn_count_terms, damping_terms


def graph_two_body(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(energies [n_local] eV, CN weights [n_local, R], per-species weight sums [S, R] detached).

    tables: pair_krc, ref_cn, ref_valid (as floats), ref_c6, pair_r0_6, pair_r0_8, pair_s8rr (D3Dispersion's
    buffers); settings: bohr, cutoff (bohr), cutoff_cn (bohr), smooth width (bohr), k_cn, weight factor, s6,
    hartree (eV)."""
    pairs = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings[0])
    cn = _coordination(species.shape[0], pairs, tables[0], settings)
    return _pair_energies(species, n_local, n_species, pairs, cn, tables, settings)


def graph_cn(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> torch.Tensor:
    """Coordination numbers [n_local] of the local nodes (centres with all their edges out to cutoff_cn), with
    their dependence on the edge vectors: the first half of graph_two_body, for an engine that sends them to the
    other ranks' ghost copies instead of making those ghosts centres (arguments as graph_two_body)."""
    pairs = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings[0])
    return _coordination(species.shape[0], pairs, tables[0], settings)[:n_local]


def graph_two_body_given_cn(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    cn: torch.Tensor, n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """graph_two_body's outputs given the coordination numbers of every node [n_nodes] (the ghosts' from their
    owners): only the pairs with a local end are read, so ghosts need reach max(cutoff, cutoff_cn) only. The
    energies depend on the edge vectors directly and on ``cn``, whose gradient the engine sends to the owners."""
    if cn.shape[0] != species.shape[0]:
        raise ValueError("cn must have one coordination number per node (" + str(species.shape[0]) + "), got "
                         + str(cn.shape[0]))
    pairs = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings[0])
    return _pair_energies(species, n_local, n_species, pairs, cn, tables, settings)


def _pairs(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_mirrored: int, n_species: int,
    bohr: float,
) -> List[torch.Tensor]:
    """[src, dst, both, r2 (detached, bohr^2), dr2, species pair]: each mirrored pair once (its reverse skipped),
    ``both`` marking those that count for their two ends; dr2 = r2 - r2.detach() is zero-valued and carries
    d/d(r^2) (see D3Dispersion.atomic_energies)."""
    n_edges = edge_index.shape[1]
    src = edge_index[0]
    dst = edge_index[1]
    vec = vectors
    if n_mirrored > 0:  # each pair once: the pairs, then the unpaired edges (the reverses are skipped)
        keep = torch.cat([torch.arange(0, n_mirrored, device=src.device),
                          torch.arange(2 * n_mirrored, n_edges, device=src.device)])
        src, dst, vec = src.index_select(0, keep), dst.index_select(0, keep), vec.index_select(0, keep)
    both = torch.arange(src.shape[0], device=src.device) < n_mirrored
    vec = vec / bohr
    r2 = (vec * vec).sum(1)
    r2d = r2.detach()
    sp = species.index_select(0, src) * n_species + species.index_select(0, dst)
    return [src, dst, both, r2d, r2 - r2d, sp]


def _coordination(n: int, pairs: List[torch.Tensor], pair_krc: torch.Tensor, settings: List[float]) -> torch.Tensor:
    """CN [n] of every node, summed over its edges (right for the centres only)."""
    src, dst, both, r2d, dr2, sp = pairs
    cutoff_cn, width, k_cn = settings[2], settings[3], settings[4]
    sel = torch.nonzero(r2d <= cutoff_cn * cutoff_cn).squeeze(1)
    cval, cslope = cn_count_terms(r2d.index_select(0, sel), pair_krc.index_select(0, sp.index_select(0, sel)), k_cn,
                                  cutoff_cn, width)
    count = cval + cslope * dr2.index_select(0, sel)
    paired = torch.nonzero(both.index_select(0, sel)).squeeze(1)
    cn = torch.zeros(n, dtype=r2d.dtype, device=r2d.device).index_add(0, src.index_select(0, sel), count)
    return cn.index_add(0, dst.index_select(0, sel).index_select(0, paired), count.index_select(0, paired))


def _pair_energies(
    species: torch.Tensor, n_local: int, n_species: int, pairs: List[torch.Tensor], cn: torch.Tensor,
    tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each local node's half of its pairs' energies given every node's CN (see graph_two_body's outputs)."""
    src, dst, both, r2d, dr2, sp = pairs
    _, ref_cn, ref_valid, ref_c6, pair_r0_6, pair_r0_8, pair_s8rr = tables
    cutoff, width, weight_factor, s6, hartree = settings[1], settings[3], settings[5], settings[6], settings[7]
    n = species.shape[0]
    dcn = cn.unsqueeze(1) - ref_cn[species]
    logw = torch.where(ref_valid[species] > 0.5, -weight_factor * dcn * dcn, torch.full_like(dcn, -float("inf")))
    w = torch.softmax(logw, dim=1)
    n_ref = w.shape[1]
    # u[a, t, b'] = sum_a' w[a, a'] C6ref[s_a, t, a', b'], so that C6_ab = sum_b' u[a, s_b, b'] w[b, b']
    u = torch.einsum("ia,itab->itb", w, ref_c6[species])

    mine = (src < n_local) | (both & (dst < n_local))
    sel = torch.nonzero((r2d <= cutoff * cutoff) & mine).squeeze(1)
    src2, dst2, sp2 = src.index_select(0, sel), dst.index_select(0, sel), sp.index_select(0, sel)
    rows = src2 * n_species + species.index_select(0, dst2)
    c6 = (u.reshape(n * n_species, n_ref).index_select(0, rows) * w.index_select(0, dst2)).sum(1)
    dval, dslope = damping_terms(r2d.index_select(0, sel), pair_r0_6.index_select(0, sp2),
                                 pair_r0_8.index_select(0, sp2), pair_s8rr.index_select(0, sp2), s6, cutoff, width)
    half = (-0.5 * c6) * (dval + dslope * dr2.index_select(0, sel))
    paired = torch.nonzero(both.index_select(0, sel)).squeeze(1)
    atomic = torch.zeros(n, dtype=r2d.dtype, device=r2d.device).index_add(0, src2, half)
    atomic = atomic.index_add(0, dst2.index_select(0, paired), half.index_select(0, paired))
    w_local = w[:n_local]
    sums = torch.zeros(n_species, n_ref, dtype=r2d.dtype, device=r2d.device).index_add(
        0, species[:n_local], w_local.detach())
    return atomic[:n_local] * hartree, w_local, sums


def graph_tail(
    species: torch.Tensor, weights: torch.Tensor, weight_sums: torch.Tensor, volume_bohr3: float,
    ref_c6: torch.Tensor, tail_integral: torch.Tensor,
) -> torch.Tensor:
    """Each local atom's share of E_tail (hartree) given the weight sums of every rank (see the module docstring)."""
    w2 = 2.0 * weights - weights.detach()  # E_tail is quadratic in the weights: W fixed, the own slope doubled
    u = torch.einsum("ia,itab->itb", w2, ref_c6[species])
    c6_sum = (u * weight_sums.unsqueeze(0)).sum(2)  # [n, S]: sum_j C6_ij over the atoms j of each species
    return (-0.5 / volume_bohr3) * (tail_integral[species] * c6_sum).sum(1)
