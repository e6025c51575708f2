"""D3(BJ) two-body energies of a pair list with their derivatives done by hand: few passes over the pairs and no
autograd graph through them; shared by the whole-system term (mlmd.model.dispersion) and the graph entries
(mlmd.model.dispersion_graph).

Per pair p = (i, j) within the cutoff, each end takes half of E_p = -C6_ij(CN_i, CN_j) D(r_ij^2) (hartree, bohr).
Everything is computed without autograd: the pair values and slopes d/d(r^2) (mlmd.model.dispersion_pairs), the
CN weights w and dw/dCN (the Gaussian weights are a softmax: dw_a/dCN = w_a (l_a - sum_b w_b l_b),
l_a = -2 k_w (CN - CNref_a)), per pair C6, dC6/dCN_i and dC6/dCN_j, then the derivative of the differentiated sum
(every node's energy in the whole system; a rank's own nodes on an engine's graph) with respect to every node's CN
and every pair's r^2, the CN dependence chained through each CN pair's slope. The caller attaches it as one
zero-valued term sum(G * (x - x.detach())) on the pair vectors (or positions and cell): the value is the energy
and the first derivatives of that sum (forces, stress, the engine's virial per edge) are exact, as in
mlmd.model.dispersion_atm. The gradient of one node's energy alone is not its own: only the differentiated sum is.
Second derivatives are not available (D3 has no trainable parameters).

Sums onto nodes use scatter_add (on CPU up to several times faster than index_add for the same sums).
Layout: the C6 factors are gathered per pair from tables stored feature-major ([2R, rows]), so that the sums over
the R reference systems run over contiguous rows instead of a reduction along a short inner dimension (several
times slower per element on CPU).
"""

from typing import List, Optional, Tuple

import torch


def weights_and_slopes(
    species: torch.Tensor, cn: torch.Tensor, ref_cn: torch.Tensor, ref_valid: torch.Tensor, weight_factor: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian CN weights w [N, R] (normalised in log space: never 0/0) and dw/dCN [N, R]; cn without autograd."""
    dcn = cn.unsqueeze(1) - ref_cn[species]
    logw = torch.where(ref_valid[species] > 0.5, -weight_factor * dcn * dcn, torch.full_like(dcn, -float("inf")))
    # softmax by hand: torch.softmax along a dimension of 3-7 references measured 2x slower on CPU
    w = (logw - logw.max(dim=1, keepdim=True)[0]).exp_()
    w = w / w.sum(1, keepdim=True)
    slope = (-2.0 * weight_factor) * dcn  # d logw / dCN (finite also where w = 0)
    dw = w * (slope - (w * slope).sum(1, keepdim=True))
    return w, dw


def c6_factors(
    species: torch.Tensor, w: torch.Tensor, dw: torch.Tensor, ref_c6: torch.Tensor, n_species: int, rows: int = -1,
) -> List[torch.Tensor]:
    """Tables for C6_ij = sum_b u[i, s_j, b] w[j, b], u[i, t, b] = sum_a w[i, a] C6ref[s_i, t, a, b]:
    [U [2R, rows*S]: rows i*S + t of u then of du/dCN, W [2R, N]: w then dw/dCN (feature-major), u [rows, S, R],
    du [rows, S, R]]. ``rows`` >= 0: u only for nodes [0, rows) (the pairs' first ends; an engine's graph whose
    centres are its local atoms needs no u of its ghosts); -1: every node."""
    n, n_ref = w.shape[0], w.shape[1]
    if 0 <= rows < n:
        n = rows
    both = torch.einsum("ica,itab->ictb", torch.stack([w[:n], dw[:n]], dim=1), ref_c6[species[:n]])  # [n, 2, S, R]
    u, du = both[:, 0], both[:, 1]
    table_u = torch.cat([u, du], dim=2).reshape(n * n_species, 2 * n_ref).t().contiguous()
    table_w = torch.cat([w, dw], dim=1).t().contiguous()
    return [table_u, table_w, u, du]


def pair_c6(
    tables: List[torch.Tensor], src: torch.Tensor, dst: torch.Tensor, species_dst: torch.Tensor, n_species: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C6, dC6/dCN_src, dC6/dCN_dst) per pair, from c6_factors' tables."""
    n_ref = tables[1].shape[0] // 2
    ug = tables[0].index_select(1, src * n_species + species_dst)
    wg = tables[1].index_select(1, dst)
    u, du = ug[:n_ref], ug[n_ref:]
    w, dw = wg[:n_ref], wg[n_ref:]
    return (u * w).sum(0), (du * w).sum(0), (u * dw).sum(0)


def add_both(n: int, src: torch.Tensor, dst: torch.Tensor, n_both: int, values: torch.Tensor) -> torch.Tensor:
    """[n] sums of per-pair values onto each pair's src, and onto the dst of the first n_both pairs too."""
    total = torch.zeros(n, dtype=values.dtype, device=values.device).scatter_add(0, src, values)
    if n_both > 0:
        total = total.scatter_add(0, dst[:n_both], values[:n_both])
    return total


def pair_energies(
    n: int, src: torch.Tensor, dst: torch.Tensor, n_both: int, species_dst: torch.Tensor, damping: torch.Tensor,
    damping_slope: torch.Tensor, tables: List[torch.Tensor], n_species: int, halves: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(each node's half of its pairs' energies [n], d(sum)/d(r^2) per pair at fixed CN, d(sum)/dCN [n]) in hartree.

    Every pair counts for its src, the first n_both also for their dst. ``halves``: per pair, how many of its two
    halves the differentiated sum holds (0, 1 or 2, as floats); None: both (the whole system)."""
    c6, c6_src, c6_dst = pair_c6(tables, src, dst, species_dst, n_species)
    atomic = add_both(n, src, dst, n_both, (c6 * damping).mul_(-0.5))
    # signs folded into the per-node sums: d(sum)/dCN = -sum over pairs of (counted halves / 2) D dC6/dCN
    weight = damping if halves is None else (0.5 * halves).mul_(damping)
    slope = (c6 * damping_slope).neg_() if halves is None else (c6 * damping_slope).mul_(-0.5 * halves)
    de_dcn = torch.zeros(n, dtype=damping.dtype, device=damping.device).scatter_add(0, src, c6_src.mul_(weight))
    de_dcn = de_dcn.scatter_add(0, dst, c6_dst.mul_(weight)).neg_()
    return atomic, slope, de_dcn


def through_cn(
    src: torch.Tensor, dst: torch.Tensor, n_both: int, count_slope: torch.Tensor, de_dcn: torch.Tensor,
) -> torch.Tensor:
    """d(sum)/d(r^2) of each CN pair through the coordination numbers it adds to (its src; its dst for the first
    n_both pairs)."""
    through = de_dcn.index_select(0, src)
    if n_both == src.shape[0]:
        return count_slope * (through + de_dcn.index_select(0, dst))
    if n_both > 0:
        both = through[:n_both] + de_dcn.index_select(0, dst[:n_both])
        through = torch.cat([both, through[n_both:]])
    return count_slope * through


def tail_terms(
    species: torch.Tensor, w: torch.Tensor, tables: List[torch.Tensor], tail_integral: torch.Tensor, n_species: int,
    weight_sums: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(V E_tail per atom, V dE_tail/dCN per atom) of the whole system (hartree bohr^3; divide by the volume), from
    the weights and c6_factors' tables (rows of the atoms given). weight_sums: the weights summed per species over
    every atom of the cell when they are not all given (an engine's ranks); None: the sums of w.

    E_tail = -(1/2V) sum_ab C6_ab I_{s_a s_b} is symmetric in a and b, so dE_tail/dCN_k = -(1/V) sum_t I_{s_k t}
    du[k, t]·W_t with W_t the weights summed over the atoms of species t."""
    n = species.shape[0]
    u, du = tables[2][:n], tables[3][:n]
    if weight_sums is None:
        weight_sums = torch.zeros(n_species, w.shape[1], dtype=w.dtype, device=w.device).index_add(0, species, w)
    w_sum = weight_sums.unsqueeze(0)
    integral = tail_integral[species]
    return -0.5 * (integral * (u * w_sum).sum(2)).sum(1), -(integral * (du * w_sum).sum(2)).sum(1)


def on_pairs(n_pairs: int, sel: Optional[torch.Tensor], values: torch.Tensor) -> torch.Tensor:
    """Per-pair values of a selection (None: all pairs) placed on the whole pair list (zero elsewhere)."""
    if sel is None:
        return values
    return torch.zeros(n_pairs, dtype=values.dtype, device=values.device).index_add(0, sel, values)


def coordination(
    n: int, src: torch.Tensor, dst: torch.Tensor, n_both: int, count: torch.Tensor, slope: torch.Tensor,
    dr2: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(CN [n] without autograd, dCN [n]: zero-valued, carrying dCN/d(r^2) through ``dr2`` = r2 - r2.detach()):
    for the terms that keep an autograd graph on the CN (the ATM term; the weights a graph entry returns)."""
    total = add_both(n, src, dst, n_both, count + slope * dr2)
    cn = total.detach()
    return cn, total - cn
