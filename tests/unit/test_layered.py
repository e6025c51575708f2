"""The layer-by-layer entry points (what pair_style mlmd runs over MPI ranks) against the one-call model.

The exchange LAMMPS does between layers is emulated here: the atoms are dealt to "ranks"; each rank holds its
own atoms and, as ghosts, the neighbours of its own atoms; before each layer the ghosts get their owners'
features (forward communication), and in the backward pass the gradients of the ghosts' features go back to
their owners (reverse communication). Energies and forces must equal the ASE calculator's (which evaluates
the whole periodic system in one call on its own graph) to round-off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from conftest import make_potential, water_box
from mlmd.deploy.export import package
from mlmd.deploy.load import load_model
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.ensemble import EnsemblePotential


def _edges(atoms, r_cut):
    i, j, d = neighbor_list("ijD", atoms, r_cut)
    return i.astype(np.int64), j.astype(np.int64), d


def layered_energy_forces(module, atoms, n_ranks: int, member: int = 0):
    """Energy and forces of the whole system, computed rank by rank, layer by layer, as pair_style mlmd does."""
    n = len(atoms)
    species_all = module.species_of(torch.tensor(atoms.numbers))
    i, j, d = _edges(atoms, float(module.r_cut))
    owner = np.arange(n) % n_ranks
    widths = module.layer_widths(member)
    n_layers = len(widths) - 1
    dtype = module.layer_embed(member, species_all[:1]).dtype
    ranks = []
    for p in range(n_ranks):
        own = np.flatnonzero(owner == p)
        sel = owner[i] == p
        ghosts = np.setdiff1d(np.unique(j[sel]), own)
        atoms_of_node = np.concatenate([own, ghosts])
        node = -np.ones(n, dtype=np.int64)
        node[atoms_of_node] = np.arange(len(atoms_of_node))
        edge_index = torch.tensor(np.stack([node[i[sel]], node[j[sel]]]))
        vec = torch.tensor(d[sel], dtype=dtype, requires_grad=True)
        sh, radial = module.layer_edges(member, vec, 0)
        sh_leaf, radial_leaf = sh.detach().requires_grad_(True), radial.detach().requires_grad_(True)
        ranks.append(dict(own=own, nodes=atoms_of_node, edge_index=edge_index, vec=vec, edges=(i[sel], j[sel]),
                          edge_out=(sh, radial), edge_in=(sh_leaf, radial_leaf),
                          species=species_all[torch.tensor(atoms_of_node)]))
    # forward: per layer, every rank's own outputs, then the "communication" through a global array
    feats = module.layer_embed(member, species_all)  # [n, width0]: depends on species only
    for r in ranks:
        r["inputs"], r["outputs"] = [], []
    for k in range(n_layers):
        new = torch.zeros(n, widths[k + 1], dtype=dtype)
        for r in ranks:
            h = feats[torch.tensor(r["nodes"])].detach().clone().requires_grad_(k > 0)
            y = module.layer_interaction(member, k, h, r["species"], r["edge_index"], *r["edge_in"], 0,
                                         len(r["own"]))
            r["inputs"].append(h)
            r["outputs"].append(y)
            new[torch.tensor(r["own"])] = y.detach()
        feats = new
    energy = 0.0
    grad_y = torch.zeros(n, widths[-1], dtype=dtype)
    for r in ranks:
        y = r["outputs"][-1]
        yl = y.detach().requires_grad_(True)
        e = module.layer_readout(member, yl, r["species"][: len(r["own"])])
        energy += float(e.detach().sum())
        (g,) = torch.autograd.grad(e.sum(), [yl])
        grad_y[torch.tensor(r["own"])] = g
    # backward: layer by layer, ghost gradients summed onto their owners; the edge attributes' gradients summed
    # over the layers, then taken back to the edge vectors once
    for r in ranks:
        r["edge_grads"] = [torch.zeros_like(t) for t in r["edge_in"]]
    for k in reversed(range(n_layers)):
        grad_in = torch.zeros(n, widths[k], dtype=dtype)
        for r in ranks:
            wanted = list(r["edge_in"]) + ([r["inputs"][k]] if k > 0 else [])
            gs = torch.autograd.grad(r["outputs"][k], wanted, grad_outputs=grad_y[torch.tensor(r["own"])])
            r["edge_grads"] = [a + b for a, b in zip(r["edge_grads"], gs[:2])]
            if k > 0:
                grad_in.index_add_(0, torch.tensor(r["nodes"]), gs[2])
        grad_y = grad_in
    forces = np.zeros((n, 3))
    for r in ranks:
        (ge,) = torch.autograd.grad(r["edge_out"], [r["vec"]], grad_outputs=r["edge_grads"])
        np.add.at(forces, r["edges"][0], ge.numpy())
        np.add.at(forces, r["edges"][1], -ge.numpy())
    return energy, forces


def split_layered_energy_forces(module, atoms, n_ranks: int, member: int = 0):
    """As layered_energy_forces, but each pair is computed on one rank only (pair_style mlmd with layer_messages
    and layer_update): a pair of two atoms of different ranks belongs to the owner of the lower atom index,
    which computes the messages both ways; the summed messages into its ghosts go to their owners, and in the
    backward pass the owners' message gradients come back to the ghost copies."""
    n = len(atoms)
    species_all = module.species_of(torch.tensor(atoms.numbers))
    i, j, d = _edges(atoms, float(module.r_cut))
    owner = np.arange(n) % n_ranks
    widths = module.layer_widths(member)
    n_layers = len(widths) - 1
    dtype = module.layer_embed(member, species_all[:1]).dtype
    # one direction of each pair (i < j, or a self-image pair with its first nonzero component positive)
    first = np.where(d[:, 0] != 0, d[:, 0], np.where(d[:, 1] != 0, d[:, 1], d[:, 2]))
    forward = (i < j) | ((i == j) & (first > 0))
    ranks = []
    for p in range(n_ranks):
        own = np.flatnonzero(owner == p)
        mine = forward & (owner[np.minimum(i, j)] == p) & ((owner[i] == p) | (owner[j] == p))
        pi, pj, pd = i[mine], j[mine], d[mine]
        others = np.concatenate([pi[owner[pi] != p], pj[owner[pj] != p]])
        ghosts = np.setdiff1d(np.unique(others), own)
        atoms_of_node = np.concatenate([own, ghosts])
        node = -np.ones(n, dtype=np.int64)
        node[atoms_of_node] = np.arange(len(atoms_of_node))
        # every edge paired: [pairs i -> j, their reverses j -> i]
        edge_index = torch.tensor(np.stack([np.concatenate([node[pi], node[pj]]),
                                            np.concatenate([node[pj], node[pi]])]))
        vec = torch.tensor(np.concatenate([pd, -pd]), dtype=dtype, requires_grad=True)
        sh, radial = module.layer_edges(member, vec, len(pi))
        sh_leaf, radial_leaf = sh.detach().requires_grad_(True), radial.detach().requires_grad_(True)
        ranks.append(dict(own=own, nodes=atoms_of_node, edge_index=edge_index, vec=vec, n_pairs=len(pi),
                          edges=(np.concatenate([pi, pj]), np.concatenate([pj, pi])), edge_out=(sh, radial),
                          edge_in=(sh_leaf, radial_leaf), species=species_all[torch.tensor(atoms_of_node)]))
    feats = module.layer_embed(member, species_all)
    for r in ranks:
        r["inputs"], r["messages"], r["summed"], r["outputs"] = [], [], [], []
    for k in range(n_layers):
        summed = torch.zeros(n, module.layer_message_widths(member)[k], dtype=dtype)
        for r in ranks:
            h = feats[torch.tensor(r["nodes"])].detach().clone().requires_grad_(True)
            msg = module.layer_messages(member, k, h, r["edge_index"], *r["edge_in"], r["n_pairs"], len(r["nodes"]))
            r["inputs"].append(h)
            r["messages"].append(msg)
            summed.index_add_(0, torch.tensor(r["nodes"]), msg.detach())  # the reverse communication
        new = torch.zeros(n, widths[k + 1], dtype=dtype)
        for r in ranks:
            own = torch.tensor(r["own"])
            a = summed[own].clone().requires_grad_(True)
            y = module.layer_update(member, k, r["inputs"][k][: len(own)], a, r["species"][: len(own)])
            r["summed"].append(a)
            r["outputs"].append(y)
            new[own] = y.detach()
        feats = new
    energy = 0.0
    grad_y = torch.zeros(n, widths[-1], dtype=dtype)
    for r in ranks:
        yl = r["outputs"][-1].detach().requires_grad_(True)
        e = module.layer_readout(member, yl, r["species"][: len(r["own"])])
        energy += float(e.detach().sum())
        (g,) = torch.autograd.grad(e.sum(), [yl])
        grad_y[torch.tensor(r["own"])] = g
    for r in ranks:
        r["edge_grads"] = [torch.zeros_like(t) for t in r["edge_in"]]
    for k in reversed(range(n_layers)):
        grad_summed = torch.zeros(n, module.layer_message_widths(member)[k], dtype=dtype)
        grad_in = torch.zeros(n, widths[k], dtype=dtype)
        for r in ranks:
            own = torch.tensor(r["own"])
            gh, ga = torch.autograd.grad(r["outputs"][k], [r["inputs"][k], r["summed"][k]], grad_outputs=grad_y[own])
            grad_summed[own] = ga
            grad_in.index_add_(0, torch.tensor(r["nodes"]), gh)
        for r in ranks:
            g_msg = grad_summed[torch.tensor(r["nodes"])]  # the forward communication of the owners' gradients
            gs = torch.autograd.grad(r["messages"][k], list(r["edge_in"]) + [r["inputs"][k]], grad_outputs=g_msg,
                                     allow_unused=True)
            r["edge_grads"] = [a if b is None else a + b for a, b in zip(r["edge_grads"], gs[:2])]
            if gs[2] is not None:
                grad_in.index_add_(0, torch.tensor(r["nodes"]), gs[2])
        grad_y = grad_in
    forces = np.zeros((n, 3))
    for r in ranks:
        (ge,) = torch.autograd.grad(r["edge_out"], [r["vec"]], grad_outputs=r["edge_grads"])
        np.add.at(forces, r["edges"][0], ge.numpy())
        np.add.at(forces, r["edges"][1], -ge.numpy())
    return energy, forces


@pytest.fixture(scope="module")
def layered_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("layered")
    single = d / "single.pt"
    package(make_potential(dtype=torch.float64, n_layers=3, r_cut=3.0, seed=2), single)
    committee = d / "committee.pt"
    members = [make_potential(dtype=torch.float64, n_layers=2, r_cut=3.0, seed=s) for s in (5, 6)]
    package(EnsemblePotential(members), committee)
    return {"single": single, "committee": committee}


@pytest.mark.parametrize("n_ranks", [1, 2, 3])
def test_layered_equals_one_call(layered_files, n_ranks):
    atoms = water_box(2, seed=1)
    module, _ = load_model(layered_files["single"])
    energy, forces = layered_energy_forces(module, atoms, n_ranks)
    a = atoms.copy()
    a.calc = MLMDCalculator(layered_files["single"])
    assert abs(energy - a.get_potential_energy()) < 1e-10 * abs(energy)
    np.testing.assert_allclose(forces, a.get_forces(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_ranks", [1, 2, 3])
@pytest.mark.parametrize("repeat", [2, 1])
def test_split_layers_equal_one_call(layered_files, n_ranks, repeat):
    """Each pair on one rank (layer_messages + layer_update, ghosts' summed messages sent to their owners) gives
    the one-call energy and forces; repeat 1: a box smaller than 2 r_cut (pairs of an atom with its images)."""
    atoms = water_box(repeat, seed=1)
    module, card = load_model(layered_files["single"])
    assert card.has_split_layers
    energy, forces = split_layered_energy_forces(module, atoms, n_ranks)
    a = atoms.copy()
    a.calc = MLMDCalculator(layered_files["single"])
    assert abs(energy - a.get_potential_energy()) < 1e-10 * abs(energy)
    np.testing.assert_allclose(forces, a.get_forces(), rtol=0, atol=1e-10)


def test_layered_committee_members(layered_files):
    """Each member through the layers equals that member's row of the committee's own evaluation."""
    atoms = water_box(2, seed=4)
    module, _ = load_model(layered_files["committee"])
    out = module.uncertainty(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                             torch.tensor(atoms.numbers), torch.tensor([True] * 3), False)
    for k in range(2):
        for evaluate in (layered_energy_forces, split_layered_energy_forces):
            energy, forces = evaluate(module, atoms, 2, member=k)
            assert abs(energy - float(out["member_energies"][k])) < 1e-10 * abs(energy)
            np.testing.assert_allclose(forces, out["member_forces"][k].numpy(), rtol=0, atol=1e-10)
    with pytest.raises(Exception, match="no committee member 2"):
        module.layer_widths(2)


def test_descriptor_models_have_no_layers(tmp_path):
    """One-shell models (Behler-Parrinello) are local already: they are packaged without the layer entries."""
    from mlmd.config import ModelConfig
    from mlmd.model.potential import build_potential

    pot = build_potential([1, 8], ModelConfig(kind="bp-acsf", r_cut=3.0, dtype="float64"), 8.0)
    path = tmp_path / "bp.pt"
    package(pot, path)
    module, _ = load_model(path)
    assert not hasattr(module, "layer_interaction")


def test_flat_layouts_give_contiguous_edge_blocks():
    """The layers read each spherical-harmonics block per edge several times: edge_features_flat stores them block
    after block, so that each block is a contiguous view (a column of an [E, (l_max+1)^2] table costs twice as much
    per read), holding the values of the one-call model's harmonics. Feature and message blocks are views too,
    whose gradient is assembled by one concatenation."""
    from mlmd.model.equivariant import unflatten_blocks

    net = make_potential(l_max=2).network
    vec = torch.randn(37, 3, dtype=torch.float64).mul_(1.5)
    sh_flat, radial = net.edge_features_flat(vec, 0)
    sh_ref, radial_ref = net._edge_attributes(vec, 0)
    blocks = net._sh_blocks(sh_flat)
    assert sh_flat.dim() == 1 and sh_flat.shape[0] == 37 * 9
    assert [tuple(b.shape) for b in blocks] == [(37, 1), (37, 3), (37, 5)]
    for b, ref in zip(blocks, sh_ref):
        assert b.is_contiguous() and b.untyped_storage().data_ptr() == sh_flat.untyped_storage().data_ptr()
        assert torch.equal(b, ref)
    assert torch.equal(radial, radial_ref)
    flat = torch.randn(5, 8 + 3 * 4, dtype=torch.float64, requires_grad=True)
    parts = unflatten_blocks(flat, [1, 3], [8, 4])
    assert [tuple(p.shape) for p in parts] == [(5, 1, 8), (5, 3, 4)]
    assert torch.equal(parts[1].reshape(5, -1), flat[:, 8:])
    (g,) = torch.autograd.grad(parts[0].sum() + 2 * parts[1].sum(), [flat])
    assert torch.equal(g, torch.cat([torch.ones(5, 8), torch.full((5, 12), 2.0)], 1).double())
