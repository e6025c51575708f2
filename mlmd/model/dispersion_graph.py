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

Each pair once over all ranks (graph_two_body_whole_pairs_given_cn): the engine names the edges to ghosts whose
pairs this rank computes (pair_style mlmd: by the parity of the two atom IDs' sum, as its parallel layers do; the
other rank of such a pair names it from its side), those and the local pairs count whole, and it gets the energies
of every node: the ghost nodes' halves belong to their owners (LAMMPS adds ghost atoms' per-atom energies onto
them). The CN still come from each local atom's full list, the same graph.

The same split with the derivatives as values (graph_cn_by_hand, graph_whole_pairs_by_hand): no autograd graph
and no zero-valued term; the engine gets each edge's dCN/d(r^2) and dE/d(r^2) at fixed CN and every node's dE/dCN
(the tail's included), sends the ghosts' dE/dCN to their owners and chains them onto the edges itself. On 4 LAMMPS
ranks this took a third of D3's CPU away (the backward passes through the CN and the energy's carrier).

Tail correction: E_tail = -(1/2V) sum_ij C6_ij I_{s_i s_j} = -(1/2V) sum_st W_s^T (C6ref_st I_st) W_t is
quadratic in the per-species sums W_s of the CN weights over every atom of the cell. graph_tail gives each local
atom its share -(1/2V) sum_t I_{s_i t} C6_i(W_t) given the summed W, with the slope through the atom's own
weights doubled (2 w - w.detach(): same value), so that the gradient of the sum over every rank's atoms is the
exact one. Units as in D3Dispersion: bohr and hartree inside.

Derivatives: by hand (mlmd.model.dispersion_two_body), attached as one zero-valued term on the edge vectors (and on
the engine's CN in the split path), so that the sum of the returned energies -- what the engine differentiates --
has exact first derivatives; an individual node's energy does not. The weights returned carry their derivatives
only when the tail is wanted (the last setting), through a small autograd graph of the CN.
"""

from typing import List, Optional, Tuple

import torch

from mlmd.model.dispersion_pairs import cn_count_terms, damping_terms, switch_of_r2
from mlmd.model.dispersion_two_body import (
    add_both,
    c6_factors,
    on_pairs,
    pair_energies,
    tail_terms,
    through_cn,
    weights_and_slopes,
)


def graph_two_body(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(energies [n_local] eV, CN weights [n_local, R], per-species weight sums [S, R] detached).

    tables: pair_krc, ref_cn, ref_valid (as floats), ref_c6, pair_r0_6, pair_r0_8, pair_s8rr (D3Dispersion's
    buffers); settings: bohr, cutoff (bohr), cutoff_cn (bohr), smooth width (bohr), k_cn, weight factor, s6,
    hartree (eV), and optionally 1.0 when the engine adds the tail (the weights then carry their derivatives; they
    are detached otherwise). The sum of the energies differentiates exactly (dispersion_two_body); one node's
    energy alone does not."""
    pairs, sel_cn, both_cn = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings)
    count, count_slope = _counts(pairs, sel_cn, tables[0], settings)
    cn = add_both(species.shape[0], pairs[6], pairs[7], both_cn, count)
    dcn: Optional[torch.Tensor] = None
    if len(settings) > 8 and settings[8] > 0.5:
        dcn = _cn_slopes(species.shape[0], pairs, sel_cn, both_cn, count_slope, settings[0])
    return _energies(species, n_local, n_mirrored, n_species, pairs, sel_cn, both_cn, cn, dcn, None, count_slope,
                     tables, settings)


def graph_cn(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> torch.Tensor:
    """Coordination numbers [n_local] of the local nodes (centres with all their edges out to cutoff_cn), with
    their dependence on the edge vectors: the first half of graph_two_body, for an engine that sends them to the
    other ranks' ghost copies instead of making those ghosts centres (arguments as graph_two_body)."""
    pairs, sel_cn, both_cn = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings)
    count, count_slope = _counts(pairs, sel_cn, tables[0], settings)
    n = species.shape[0]
    cn = add_both(n, pairs[6], pairs[7], both_cn, count)
    return (cn + _cn_slopes(n, pairs, sel_cn, both_cn, count_slope, settings[0]))[:n_local]


def graph_two_body_given_cn(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    cn: torch.Tensor, n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """graph_two_body's outputs given the coordination numbers of every node [n_nodes] (the ghosts' from their
    owners): only the pairs with a local end are read, so ghosts need reach max(cutoff, cutoff_cn) only. The
    energies depend on the edge vectors directly and on ``cn``, whose gradient the engine sends to the owners."""
    return _given_cn(species, edge_index, vectors, n_local, n_mirrored, cn, n_species, tables, settings, False)


def graph_two_body_whole_pairs_given_cn(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    cn: torch.Tensor, ghost_pairs: torch.Tensor, n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """graph_two_body_given_cn with each pair across ranks on one rank: on the same graph (local pairs mirrored,
    then the unpaired edges: those to ghosts), the local pairs and the unpaired edges listed in ``ghost_pairs``
    (indices of the pairs this rank computes) count whole, the other unpaired edges not at all (their pairs' other
    rank counts them). Energies [n_nodes] of every node (a ghost node's half belongs to its owner), weights and
    sums of the local nodes as graph_two_body_given_cn. The sum of the energies over every rank is the whole system's
    two-body energy and differentiates exactly (through ``cn`` too)."""
    listed = torch.cat([torch.arange(n_mirrored, device=edge_index.device), ghost_pairs])
    # a graph of pairs only: each listed once, no reverses (every pair counts for both ends)
    ei, vec = edge_index.index_select(1, listed), vectors.index_select(0, listed)
    return _given_cn(species, ei, vec, n_local, int(listed.shape[0]), cn, n_species, tables, settings, True)


def graph_cn_by_hand(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    n_species: int, tables: List[torch.Tensor], settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """graph_cn without autograd: (CN [n_local] of the local nodes, dCN/d(r^2) of every edge [n_edges] (Å^-2: the
    CN of its src, and of its dst too for the first n_mirrored; 0 for the reverses, which are not read), the local
    nodes' CN weights summed per species [S, R] (the tail's share of this rank)). With the slopes the engine takes
    any dE/dCN onto the edge vectors itself: dE/dv_e = 2 slope_e (dE/dCN_src + dE/dCN_dst if mirrored) v_e."""
    pairs, sel_cn, both_cn = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings, False)
    count, count_slope = _counts(pairs, sel_cn, tables[0], settings)
    cn = add_both(species.shape[0], pairs[6], pairs[7], both_cn, count)[:n_local]
    per_pair = on_pairs(pairs[3].shape[0], sel_cn, count_slope) * (1.0 / (settings[0] * settings[0]))
    w, _ = weights_and_slopes(species[:n_local], cn, tables[1], tables[2], settings[5])
    sums = torch.zeros(n_species, w.shape[1], dtype=w.dtype, device=w.device).index_add(0, species[:n_local], w)
    return cn, _on_edges(per_pair, n_mirrored, edge_index.shape[1]), sums


def graph_whole_pairs_by_hand(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    cn: torch.Tensor, ghost_pairs: torch.Tensor, weight_sums: torch.Tensor, volume_bohr3: float, n_species: int,
    tables: List[torch.Tensor], tail_integral: torch.Tensor, settings: List[float],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """graph_two_body_whole_pairs_given_cn and the tail without autograd, for an engine that chains the
    derivatives itself: (energies [n_nodes] eV: the local nodes' with their tail share, the ghost nodes' halves for
    their owners; dE/d(r^2) of every edge at fixed CN [n_edges] (eV Å^-2; zero for edges this rank does not count);
    dE/dCN of every node [n_nodes] (eV; the ghosts' belong to their owners); the tail part of the local energies
    [n_local] (eV; empty without the tail)). E is the sum over every rank of the energies; weight_sums: the CN
    weights summed per species over every rank (graph_cn_by_hand's, added up); volume_bohr3 > 0 adds the tail."""
    if cn.shape[0] != species.shape[0]:
        raise ValueError("cn must have one coordination number per node (" + str(species.shape[0]) + "), got "
                         + str(cn.shape[0]))
    _, ref_cn, ref_valid, ref_c6, pair_r0_6, pair_r0_8, pair_s8rr = tables
    bohr, cutoff, width, hartree = settings[0], settings[1], settings[3], settings[7]
    n, n_edges = species.shape[0], edge_index.shape[1]
    listed = torch.cat([torch.arange(n_mirrored, device=edge_index.device), ghost_pairs])
    src, dst = edge_index[0].index_select(0, listed), edge_index[1].index_select(0, listed)
    vec = vectors.detach().index_select(0, listed)
    r2 = torch.mv(vec * vec, torch.full((3,), 1.0 / (bohr * bohr), dtype=vec.dtype, device=vec.device))
    if width == 0.0:  # sharp cutoff: the pairs within it only
        keep = torch.nonzero(r2 <= cutoff * cutoff).squeeze(1)
        listed, src, dst, r2 = listed.index_select(0, keep), src.index_select(0, keep), dst.index_select(0, keep), \
            r2.index_select(0, keep)
    sd = species.index_select(0, dst)
    sp = species.index_select(0, src) * n_species + sd
    w, dw = weights_and_slopes(species, cn, ref_cn, ref_valid, settings[5])
    factors = c6_factors(species, w, dw, ref_c6, n_species, n_local)  # every pair's first end is local
    dval, dslope = damping_terms(r2, pair_r0_6.index_select(0, sp), pair_r0_8.index_select(0, sp),
                                 pair_s8rr.index_select(0, sp), settings[6], cutoff, width)
    atomic, slope, de_dcn = pair_energies(n, src, dst, int(src.shape[0]), sd, dval, dslope, factors, n_species, None)
    tail = torch.zeros(0, dtype=vec.dtype, device=vec.device)
    if volume_bohr3 > 0.0:
        v_tail, v_dtail = tail_terms(species[:n_local], w[:n_local], factors, tail_integral, n_species, weight_sums)
        tail = v_tail * (hartree / volume_bohr3)
        atomic = torch.cat([atomic[:n_local] + v_tail * (1.0 / volume_bohr3), atomic[n_local:]])
        de_dcn = torch.cat([de_dcn[:n_local] + v_dtail * (1.0 / volume_bohr3), de_dcn[n_local:]])
    per_edge = torch.zeros(n_edges, dtype=vec.dtype, device=vec.device).index_copy_(0, listed, slope)
    return atomic * hartree, per_edge * (hartree / (bohr * bohr)), de_dcn * hartree, tail


def _on_edges(per_pair: torch.Tensor, n_mirrored: int, n_edges: int) -> torch.Tensor:
    """Values of _kept's rows placed on the edges they came from (zero on the reverses of mirrored pairs)."""
    if n_mirrored == 0 or n_mirrored == n_edges:
        return per_pair
    zeros = torch.zeros(n_mirrored, dtype=per_pair.dtype, device=per_pair.device)
    return torch.cat([per_pair[:n_mirrored], zeros, per_pair[n_mirrored:]])


def _given_cn(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    cn: torch.Tensor, n_species: int, tables: List[torch.Tensor], settings: List[float], whole_pairs: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two given-CN entries' common part: every node's CN a leaf of the engine's (see _energies)."""
    if cn.shape[0] != species.shape[0]:
        raise ValueError("cn must have one coordination number per node (" + str(species.shape[0]) + "), got "
                         + str(cn.shape[0]))
    pairs, sel_cn, both_cn = _pairs(species, edge_index, vectors, n_mirrored, n_species, settings)
    fixed = cn.detach()
    return _energies(species, n_local, n_mirrored, n_species, pairs, sel_cn, both_cn, fixed, cn - fixed, cn, None,
                     tables, settings, whole_pairs)


def _kept(x: torch.Tensor, n_mirrored: int) -> torch.Tensor:
    """Rows of each mirrored pair once (the first n_mirrored; their reverses, the next n_mirrored, skipped), then
    the unpaired edges; a view when every edge is paired (no copy)."""
    if n_mirrored == 0:
        return x
    if 2 * n_mirrored == x.shape[0] or n_mirrored == x.shape[0]:  # (pairs without their reverses: the same)
        return x[:n_mirrored]
    return torch.cat([x[:n_mirrored], x[2 * n_mirrored:]])


def _pairs(
    species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_mirrored: int, n_species: int,
    settings: List[float], carrier: bool = True,
) -> Tuple[List[torch.Tensor], Optional[torch.Tensor], int]:
    """([src, dst, vectors (bohr), r2, species of dst, species pair, the CN pairs' src, their dst, their r2, the
    zero-valued vectors - vectors.detach() (Å) that carries the derivatives], the CN pairs' indices (None: all),
    how many CN pairs count for both ends). Each mirrored pair once and first, then the unpaired edges: the first
    n_mirrored count for their two ends. With a smooth cutoff every pair is a CN pair (the counting function
    vanishes beyond cutoff_cn). carrier False (the by-hand entries): the vectors stay in Å and carry nothing."""
    src, dst = _kept(edge_index[0], n_mirrored), _kept(edge_index[1], n_mirrored)
    if carrier:
        vec = _kept(vectors.detach(), n_mirrored) / settings[0]
        r2 = torch.mv(vec * vec, torch.ones(3, dtype=vec.dtype, device=vec.device))  # faster than .sum(1)
        dvec = _kept(vectors - vectors.detach(), n_mirrored)
    else:  # derivatives as values (the by-hand entries): r^2 only, no vectors in bohr, no carrier
        vec = _kept(vectors.detach(), n_mirrored)
        r2 = torch.mv(vec * vec, torch.full((3,), 1.0 / (settings[0] * settings[0]), dtype=vec.dtype,
                                            device=vec.device))
        dvec = vec
    sd = species.index_select(0, dst)
    sp = species.index_select(0, src) * n_species + sd
    if settings[3] > 0.0:
        return [src, dst, vec, r2, sd, sp, src, dst, r2, dvec], None, min(n_mirrored, src.shape[0])
    sel_cn = torch.nonzero(r2 <= settings[2] * settings[2]).squeeze(1)
    both_cn = int((sel_cn < n_mirrored).sum())
    return [src, dst, vec, r2, sd, sp, src.index_select(0, sel_cn), dst.index_select(0, sel_cn),
            r2.index_select(0, sel_cn), dvec], sel_cn, both_cn


def _counts(
    pairs: List[torch.Tensor], sel_cn: Optional[torch.Tensor], pair_krc: torch.Tensor, settings: List[float]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CN pairs' counting function and its d/d(r^2)."""
    r2_cn, sp = pairs[8], pairs[5]
    if sel_cn is not None:
        sp = sp.index_select(0, sel_cn)
    return cn_count_terms(r2_cn, pair_krc.index_select(0, sp), settings[4], settings[2], settings[3],
                          _switch(pairs, sel_cn is None, settings[2], settings))


def _switch(
    pairs: List[torch.Tensor], every_pair: bool, cutoff: float, settings: List[float]
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The smooth cutoff's switch at ``cutoff`` on the CN pairs (every pair: ``every_pair``), computed once when the
    two-body and CN cutoffs are equal (kept as pairs[10] and pairs[11])."""
    if settings[3] == 0.0:
        return None
    if len(pairs) > 10:
        return pairs[10], pairs[11]
    sw = switch_of_r2(pairs[8], cutoff, settings[3])
    if sw is not None and every_pair and settings[1] == settings[2]:
        pairs.append(sw[0])
        pairs.append(sw[1])
    return sw


def _cn_slopes(
    n: int, pairs: List[torch.Tensor], sel_cn: Optional[torch.Tensor], both_cn: int, count_slope: torch.Tensor,
    bohr: float,
) -> torch.Tensor:
    """dCN [n]: zero-valued, with the CN's derivatives with respect to the edge vectors (an autograd graph)."""
    dr2 = torch.mv(pairs[2] * pairs[9], torch.full((3,), 2.0 / bohr, dtype=pairs[2].dtype, device=pairs[2].device))
    if sel_cn is not None:
        dr2 = dr2.index_select(0, sel_cn)
    return add_both(n, pairs[6], pairs[7], both_cn, count_slope * dr2)


def _energies(
    species: torch.Tensor, n_local: int, n_mirrored: int, n_species: int, pairs: List[torch.Tensor],
    sel_cn: Optional[torch.Tensor], both_cn: int, cn: torch.Tensor, dcn: Optional[torch.Tensor],
    cn_leaf: Optional[torch.Tensor], count_slope: Optional[torch.Tensor], tables: List[torch.Tensor],
    settings: List[float], whole_pairs: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each local node's half of its pairs' energies given every node's CN (see graph_two_body's outputs), with
    one zero-valued term carrying the derivatives of their sum: through the edge vectors (and the CN, chained
    through count_slope when given) and through ``cn_leaf`` (the engine's CN) when given. dcn: the CN's slopes
    for the weights returned (None: detached weights). whole_pairs: every listed pair counts whole, ghost ends
    included, and every node's energy is returned (graph_two_body_whole_pairs_given_cn)."""
    src, dst, vec, r2_all, sd, sp = pairs[:6]
    _, ref_cn, ref_valid, ref_c6, pair_r0_6, pair_r0_8, pair_s8rr = tables
    bohr, cutoff, width, hartree = settings[0], settings[1], settings[3], settings[7]
    n, n_pairs = species.shape[0], r2_all.shape[0]
    n_both = min(n_mirrored, n_pairs)
    w, dw = weights_and_slopes(species, cn, ref_cn, ref_valid, settings[5])

    # the pairs with a local end within the cutoff, and how many of their two halves are local. With a smooth
    # cutoff a pair beyond it adds exact zeros (s = ds = 0), so only the ends are checked; no selection (no copies)
    # when every pair is kept: a periodic graph, or the split path's graph of local centres (cutoff >= cutoff_cn)
    sel: Optional[torch.Tensor] = None
    src2, dst2, sd2, sp2, r2, both = src, dst, sd, sp, r2_all, n_both
    partial = n_local < n and not whole_pairs  # only the local ends' halves count
    if partial or width == 0.0:
        wanted: Optional[torch.Tensor] = None
        if width == 0.0:
            wanted = r2_all <= cutoff * cutoff
        if partial:
            mine = src < n_local
            mine = mine | ((dst < n_local) & (torch.arange(n_pairs, device=src.device) < n_mirrored))
            wanted = mine if wanted is None else wanted & mine
        if wanted is not None and not bool(wanted.all()):
            keep = torch.nonzero(wanted).squeeze(1)
            src2, dst2, sd2 = src.index_select(0, keep), dst.index_select(0, keep), sd.index_select(0, keep)
            sp2, r2 = sp.index_select(0, keep), r2_all.index_select(0, keep)
            both = int((keep < n_mirrored).sum())
            sel = keep
    # u (the big C6 factor) only up to the last node that is a pair's first end
    rows = int(src2.max()) + 1 if src2.shape[0] > 0 else 0
    factors = c6_factors(species, w, dw, ref_c6, n_species, rows)
    halves: Optional[torch.Tensor] = None
    if partial:
        local_halves = (src2 < n_local).to(r2.dtype)
        if both > 0:
            local_halves = torch.cat([local_halves[:both] + (dst2[:both] < n_local).to(r2.dtype),
                                      local_halves[both:]])
        halves = local_halves
    elif both < src2.shape[0]:  # the unpaired edges count for their src only
        halves = torch.cat([torch.full((both,), 2.0, dtype=r2.dtype, device=r2.device),
                            torch.ones(src2.shape[0] - both, dtype=r2.dtype, device=r2.device)])
    sw = switch_of_r2(r2, cutoff, width) if sel is not None or len(pairs) < 11 else (pairs[10], pairs[11])
    dval, dslope = damping_terms(r2, pair_r0_6.index_select(0, sp2), pair_r0_8.index_select(0, sp2),
                                 pair_s8rr.index_select(0, sp2), settings[6], cutoff, width, sw)
    atomic, slope, de_dcn = pair_energies(n, src2, dst2, both, sd2, dval, dslope, factors, n_species, halves)

    # d(sum)/d(r^2) of every pair, then one zero-valued term on the edge vectors (and the engine's CN)
    per_pair = on_pairs(n_pairs, sel, slope)
    if count_slope is not None:
        through = through_cn(pairs[6], pairs[7], both_cn, count_slope, de_dcn)
        per_pair = per_pair + on_pairs(n_pairs, sel_cn, through)
    grad_vec = ((2.0 / bohr) * per_pair).unsqueeze(1) * vec  # d(sum)/d(edge vector in Å)
    linear = (grad_vec * pairs[9]).sum()
    if cn_leaf is not None:
        linear = linear + (de_dcn * (cn_leaf - cn_leaf.detach())).sum()
    energies = atomic[:n_local]
    if n_local > 0:
        energies = energies + linear / n_local
    if whole_pairs:
        energies = torch.cat([energies, atomic[n_local:]])
    w_local = w[:n_local]
    if dcn is not None:
        w_local = w_local + dw[:n_local] * dcn[:n_local].unsqueeze(1)
    sums = torch.zeros(n_species, w.shape[1], dtype=w.dtype, device=w.device).index_add(0, species[:n_local],
                                                                                      w[:n_local])
    return energies * hartree, w_local, sums


def graph_tail(
    species: torch.Tensor, weights: torch.Tensor, weight_sums: torch.Tensor, volume_bohr3: float,
    ref_c6: torch.Tensor, tail_integral: torch.Tensor,
) -> torch.Tensor:
    """Each local atom's share of E_tail (hartree) given the weight sums of every rank (see the module docstring)."""
    w2 = 2.0 * weights - weights.detach()  # E_tail is quadratic in the weights: W fixed, the own slope doubled
    u = torch.einsum("ia,itab->itb", w2, ref_c6[species])
    c6_sum = (u * weight_sums.unsqueeze(0)).sum(2)  # [n, S]: sum_j C6_ij over the atoms j of each species
    return (-0.5 / volume_bohr3) * (tail_integral[species] * c6_sum).sum(1)
