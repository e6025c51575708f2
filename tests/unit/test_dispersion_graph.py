"""D3 split at the coordination numbers (local_dispersion_cn / local_dispersion_given_cn of a packaged file), run as
an engine over several ranks runs it, against the whole-system D3 (D3Dispersion.atomic_energies and autograd).

The atoms of a periodic water box are dealt to "ranks" by slabs; each rank's graph holds its own atoms as the only
centres and every atom or periodic image within max(cutoff, cutoff_cn) of them as a ghost node (no image folded,
so that ghosts owned by the same rank are exchanged too). Each rank computes its local atoms' CN, the ghosts get
their owners' CN (forward exchange), the pairs with a local end are evaluated given those CN with the tail
correction from the weight sums of every rank, and the gradients of the ghosts' CN are added onto their owners
(reverse exchange) and taken through dCN/dr: per-atom energies and forces must be the whole-system ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vesin_torch import NeighborList

from conftest import REPO, make_potential, water_box
from mlmd import keys as K
from mlmd.deploy.export import package
from mlmd.deploy.load import load_model
from mlmd.model.longrange import DispersionTerm

SETTINGS = {
    "gfn2_tail": dict(functional="gfn2", cutoff=6.0, cutoff_cn=5.0, smooth_width=2.0, tail_correction=True),
    "cn_beyond_pairs": dict(functional="pbe", cutoff=4.5, cutoff_cn=6.0, s6=0.9, s8=1.1, a1=0.45, a2=4.0),
}


def rank_graphs(positions: torch.Tensor, cell: torch.Tensor, owner: np.ndarray, reach: float):
    """Per rank: (atom of each node, edge_index, vectors as a function of positions, n_local)."""
    nl = NeighborList(cutoff=reach, full_list=True)
    i, j, shifts = nl.compute(positions.detach(), cell, True, "ijS")
    i, j, shifts = i.numpy(), j.numpy(), shifts.numpy()
    graphs = []
    for rank in range(int(owner.max()) + 1):
        local = np.flatnonzero(owner == rank)
        node_of = {(int(a), 0, 0, 0): n for n, a in enumerate(local)}
        atoms = list(local)
        src, dst, edges = [], [], []
        for e in np.flatnonzero(owner[i] == rank):
            key = (int(j[e]), *map(int, shifts[e]))
            if key not in node_of:
                node_of[key] = len(atoms)
                atoms.append(int(j[e]))
            src.append(node_of[(int(i[e]), 0, 0, 0)])
            dst.append(node_of[key])
            edges.append(e)
        edges = np.array(edges, dtype=np.int64)
        shift = torch.tensor(shifts[edges], dtype=positions.dtype) @ cell
        vectors = positions[torch.tensor(j[edges])] + shift - positions[torch.tensor(i[edges])]
        graphs.append((np.array(atoms), torch.tensor([src, dst], dtype=torch.long), vectors, len(local)))
    return graphs


def whole_system(term: DispersionTerm, n_ranks: int):
    """The rattled water box the tests here deal to ranks: (atoms, positions (a leaf), cell, numbers, the term's
    whole-system per-atom energies and forces, the owner rank of each atom by slabs in x)."""
    atoms = water_box(3, seed=4)
    atoms.rattle(0.05, seed=2)
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    numbers = torch.tensor(atoms.numbers)
    ref = term.d3.atomic_energies(positions, cell, numbers, torch.tensor([True] * 3))
    ref_forces = -torch.autograd.grad(ref.sum(), positions)[0]
    owner = np.minimum((atoms.positions[:, 0] % atoms.cell[0, 0]) * n_ranks // atoms.cell[0, 0], n_ranks - 1)
    owner = owner.astype(int)
    assert len(set(owner)) == n_ranks
    return atoms, positions, cell, numbers, ref, ref_forces, owner


def pair_local_edges(edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int):
    """The plugin's layout on several ranks (pair_mlmd_d3.cpp, mirror_by_index): each pair of local nodes once
    (n -> m, n < m), then their reverses in the same order, then the edges to ghosts; returns n_mirrored too."""
    src, dst = edge_index
    local = dst < n_local
    first = torch.nonzero(local & (src < dst)).squeeze(1)
    assert 2 * first.shape[0] == int(local.sum())
    rest = torch.nonzero(~local).squeeze(1)
    ei = torch.cat([edge_index[:, first], edge_index[:, first].flip(0), edge_index[:, rest]], dim=1)
    vec = torch.cat([vectors[first], -vectors[first], vectors[rest]])
    return ei, vec, first.shape[0]


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("n_ranks, mirrored", [(1, False), (3, False), (3, True)])
def test_split_at_cn_over_ranks_is_the_whole_system_d3(tmp_path, name, n_ranks, mirrored):
    term = DispersionTerm(atomic_numbers=[1, 8], **SETTINGS[name])
    path = tmp_path / "d3.pt"
    card = package(make_potential(seed=1), path, long_range=[term])
    assert card.has_local_dispersion_cn and card.provides(K.ENTRY_LOCAL_DISPERSION_GIVEN_CN)
    model = load_model(path)[0]
    atoms, positions, cell, numbers, ref, ref_forces, owner = whole_system(term, n_ranks)
    species = model.species_of(numbers)
    graphs = rank_graphs(positions, cell, owner, max(SETTINGS[name]["cutoff"], SETTINGS[name]["cutoff_cn"]))
    n_mirrored = [0] * n_ranks
    if mirrored:  # the local pairs once, the ghost edges unpaired
        for r, (nodes, ei, vec, n_local) in enumerate(graphs):
            ei, vec, n_mirrored[r] = pair_local_edges(ei, vec, n_local)
            graphs[r] = (nodes, ei, vec, n_local)
        assert min(n_mirrored) > 0 and all(2 * m < g[1].shape[1] for m, g in zip(n_mirrored, graphs))
    # the local atoms' CN on each rank, then every node's from its owner (forward exchange)
    cns = [model.local_dispersion_cn(species[nodes], ei, vec, n_local, m)
           for (nodes, ei, vec, n_local), m in zip(graphs, n_mirrored)]
    cn_of_atom = torch.zeros(len(atoms), dtype=torch.float64)
    for (nodes, _, _, n_local), cn in zip(graphs, cns):
        cn_of_atom[nodes[:n_local]] = cn.detach()
    leaves, outs = [], []
    for (nodes, ei, vec, n_local), m in zip(graphs, n_mirrored):
        leaves.append(cn_of_atom[nodes].clone().requires_grad_(True))
        outs.append(model.local_dispersion_given_cn(species[nodes], ei, vec, n_local, leaves[-1], m))
    total_sums = sum(out[2] for out in outs)  # MPI_Allreduce of the per-species weight sums
    volume = float(atoms.get_volume())
    energies = torch.zeros(len(atoms), dtype=torch.float64)
    e_total = torch.zeros((), dtype=torch.float64)
    for (nodes, _, _, n_local), out in zip(graphs, outs):
        e = out[0]
        if SETTINGS[name].get("tail_correction"):
            e = e + model.local_dispersion_tail(species[nodes[:n_local]], out[1], total_sums, volume)
        energies[nodes[:n_local]] = e.detach()
        e_total = e_total + e.sum()
    grads = torch.autograd.grad(e_total, [positions, *leaves], retain_graph=True)  # vectors shared with cns
    de_dcn = torch.zeros(len(atoms), dtype=torch.float64)  # reverse exchange: every copy's row onto its owner
    for (nodes, _, _, _), g in zip(graphs, grads[1:]):
        de_dcn.index_add_(0, torch.tensor(nodes), g)

    def through_cn(de_dcn):
        outputs = [de_dcn[nodes[:n_local]] for nodes, _, _, n_local in graphs]
        return torch.autograd.grad(cns, positions, outputs, retain_graph=True)[0]

    forces = -(grads[0] + through_cn(de_dcn))

    assert float(ref.detach().sum()) < -0.1
    np.testing.assert_allclose(energies.numpy(), ref.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(forces.numpy(), ref_forces.numpy(), rtol=0, atol=1e-11)
    if n_ranks > 1:  # the reverse exchange matters: the local rows alone give other forces
        own = torch.zeros(len(atoms), dtype=torch.float64)
        for (nodes, _, _, n_local), g in zip(graphs, grads[1:]):
            own[torch.tensor(nodes[:n_local])] += g[:n_local]
        assert float((grads[0] + through_cn(own) + ref_forces).abs().max()) > 1e-4


def ghost_pairs_here(nodes: np.ndarray, ei: torch.Tensor, n_mirrored: int) -> torch.Tensor:
    """The edges to ghosts whose pairs this rank computes (pair_mlmd_d3.cpp, LocalGraph::ghost_pairs: the atom-ID
    parity rule; IDs here: atom indices), after the local pairs and their reverses."""
    rest = torch.arange(2 * n_mirrored, ei.shape[1])
    ti, tj = torch.tensor(nodes)[ei[0, rest]], torch.tensor(nodes)[ei[1, rest]]
    assert bool((ti != tj).all())
    odd = (ti + tj) % 2 == 1
    return rest[(ti > tj) == odd]


def whole_pairs_ranks(tmp_path, name: str, n_ranks: int, entries: tuple[str, ...]):
    """The packaged D3 file (its card listing `entries`), the whole system (as whole_system), the species and each
    rank's graph in the plugin's layout with the edges to ghosts whose pairs it computes:
    (model, atoms, positions, ref, ref_forces, species, [(nodes, edge_index, vectors, n_local, n_mirrored,
    ghost_pairs)])."""
    term = DispersionTerm(atomic_numbers=[1, 8], **SETTINGS[name])
    path = tmp_path / "d3.pt"
    card = package(make_potential(seed=1), path, long_range=[term])
    assert all(card.provides(e) for e in entries)
    model = load_model(path)[0]
    atoms, positions, cell, numbers, ref, ref_forces, owner = whole_system(term, n_ranks)
    species = model.species_of(numbers)
    reach = max(SETTINGS[name]["cutoff"], SETTINGS[name]["cutoff_cn"])
    graphs = []
    for nodes, ei, vec, n_local in rank_graphs(positions, cell, owner, reach):
        ei, vec, m = pair_local_edges(ei, vec, n_local)
        graphs.append((nodes, ei, vec, n_local, m, ghost_pairs_here(nodes, ei, m)))
    return model, atoms, positions, ref, ref_forces, species, graphs


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("n_ranks", [1, 3])
def test_each_pair_on_one_rank_is_the_whole_system_d3(tmp_path, name, n_ranks):
    """local_dispersion_whole_pairs: each pair across ranks on one of its ranks (counted whole, its ghost end's
    half returned for the owner), the CN still from every local atom's full list: per-atom energies (ghost nodes'
    halves added onto their atoms) and forces are the whole system's, and every pair is computed once."""
    model, atoms, positions, ref, ref_forces, species, graphs = whole_pairs_ranks(
        tmp_path, name, n_ranks, (K.ENTRY_LOCAL_DISPERSION_WHOLE_PAIRS,))
    cns = [model.local_dispersion_cn(species[g[0]], g[1], g[2], g[3], g[4]) for g in graphs]
    cn_of_atom = torch.zeros(len(atoms), dtype=torch.float64)
    for g, cn in zip(graphs, cns):
        cn_of_atom[g[0][: g[3]]] = cn.detach()
    leaves, outs = [], []
    for nodes, ei, vec, n_local, m, kept in graphs:
        leaves.append(cn_of_atom[nodes].clone().requires_grad_(True))
        outs.append(model.local_dispersion_whole_pairs(species[nodes], ei, vec, n_local, leaves[-1], m, kept))
    # every pair within reach once over all ranks (half of the full list's edges, reverses included)
    assert sum(g[4] + g[5].shape[0] for g in graphs) * 2 == sum(g[1].shape[1] for g in graphs)

    total_sums = sum(out[2] for out in outs)
    volume = float(atoms.get_volume())
    energies = torch.zeros(len(atoms), dtype=torch.float64)
    e_total = torch.zeros((), dtype=torch.float64)
    for g, out in zip(graphs, outs):
        nodes, n_local = g[0], g[3]
        e = out[0]
        assert e.shape[0] == len(nodes)
        if SETTINGS[name].get("tail_correction"):
            e = torch.cat([e[:n_local] + model.local_dispersion_tail(species[nodes[:n_local]], out[1], total_sums,
                                                                      volume), e[n_local:]])
        energies.index_add_(0, torch.tensor(nodes), e.detach())  # ghost nodes' halves onto their atoms
        e_total = e_total + e.sum()
    grads = torch.autograd.grad(e_total, [positions, *leaves], retain_graph=True)
    de_dcn = torch.zeros(len(atoms), dtype=torch.float64)
    for g, grad in zip(graphs, grads[1:]):
        de_dcn.index_add_(0, torch.tensor(g[0]), grad)
    outputs = [de_dcn[g[0][: g[3]]] for g in graphs]
    forces = -(grads[0] + torch.autograd.grad(cns, positions, outputs)[0])

    assert float(ref.detach().sum()) < -0.1
    np.testing.assert_allclose(energies.numpy(), ref.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(forces.numpy(), ref_forces.numpy(), rtol=0, atol=1e-11)


def chain_by_hand(edge_index: torch.Tensor, vectors: torch.Tensor, n_mirrored: int, cn_slopes: torch.Tensor,
                  pair_slopes: torch.Tensor, de_dcn_local: torch.Tensor) -> torch.Tensor:
    """dE/d(edge vector) as pair_style mlmd takes it from the by-hand entries (Model::dispersion_by_hand):
    2 (p_e + s_e (dE/dCN_src + dE/dCN_dst for the first n_mirrored edges)) v_e."""
    via = de_dcn_local[edge_index[0]].clone()
    via[:n_mirrored] += de_dcn_local[edge_index[1, :n_mirrored]]
    return (2.0 * (pair_slopes + cn_slopes * via)).unsqueeze(1) * vectors


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("n_ranks", [1, 3])
def test_derivatives_by_hand_over_ranks_are_the_whole_system_d3(tmp_path, name, n_ranks):
    """local_dispersion_cn_slopes + local_dispersion_by_hand: no autograd graph, the derivatives as values (each
    edge's dCN/d(r^2) and dE/d(r^2), every node's dE/dCN), the ghosts' dE/dCN summed onto their owners and chained
    onto the edges as the plugin does; the tail from the weight sums of every rank. Per-atom energies and forces are
    the whole-system D3's (autograd through positions, an independent route), every pair computed once."""
    model, atoms, _, ref, ref_forces, species, graphs = whole_pairs_ranks(
        tmp_path, name, n_ranks, (K.ENTRY_LOCAL_DISPERSION_CN_SLOPES, K.ENTRY_LOCAL_DISPERSION_BY_HAND))
    graphs = [(g[0], g[1], g[2].detach(), *g[3:]) for g in graphs]  # no autograd anywhere
    firsts = [model.local_dispersion_cn_slopes(species[g[0]], g[1], g[2], g[3], g[4]) for g in graphs]
    cn_of_atom = torch.zeros(len(atoms), dtype=torch.float64)
    for g, first in zip(graphs, firsts):
        assert not first[0].requires_grad and first[1].shape == (g[1].shape[1],)
        cn_of_atom[g[0][: g[3]]] = first[0]
    sums = sum(first[2] for first in firsts)
    volume = float(atoms.get_volume())
    outs = [model.local_dispersion_by_hand(species[g[0]], g[1], g[2], g[3], g[4], cn_of_atom[g[0]], g[5], sums,
                                           volume) for g in graphs]
    energies = torch.zeros(len(atoms), dtype=torch.float64)
    de_dcn = torch.zeros(len(atoms), dtype=torch.float64)
    for g, out in zip(graphs, outs):
        energies.index_add_(0, torch.tensor(g[0]), out[0])  # ghost nodes' halves onto their atoms
        de_dcn.index_add_(0, torch.tensor(g[0]), out[2])  # reverse exchange
        assert out[3].shape[0] == (g[3] if SETTINGS[name].get("tail_correction") else 0)
    forces = torch.zeros(len(atoms), 3, dtype=torch.float64)
    for g, first, out in zip(graphs, firsts, outs):
        nodes, ei, vec, n_local, m = torch.tensor(g[0]), *g[1:5]
        grad = chain_by_hand(ei, vec, m, first[1], out[1], de_dcn[nodes[:n_local]])
        # dE/dv_e with v_e = x_dst - x_src: onto the atoms of both ends
        forces.index_add_(0, nodes[ei[0]], grad).index_add_(0, nodes[ei[1]], -grad)

    assert float(ref.detach().sum()) < -0.1
    np.testing.assert_allclose(energies.numpy(), ref.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(forces.numpy(), ref_forces.numpy(), rtol=0, atol=1e-11)


def test_repackaging_gives_an_older_d3_file_the_split(tmp_path):
    """The hybrid water model as bundled before the split (D3 packaged with local_dispersion only; kept as
    tests/data/water_model_hybrid_before_cn_entry.pt) gets the two entries from `mlmd package OLD -o NEW`, its D3
    rebuilt from the card with every buffer equal: same weights checksum."""
    from mlmd.deploy.export import repackage

    old = REPO / "tests" / "data" / "water_model_hybrid_before_cn_entry.pt"
    before = load_model(old)[1]
    assert before.has_local_dispersion and not before.has_local_dispersion_cn
    after = repackage(old, tmp_path / "new.pt")
    assert after.has_local_dispersion_cn
    assert after.weights_sha256 == before.weights_sha256
