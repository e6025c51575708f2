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


def test_layered_committee_members(layered_files):
    """Each member through the layers equals that member's row of the committee's own evaluation."""
    atoms = water_box(2, seed=4)
    module, _ = load_model(layered_files["committee"])
    out = module.uncertainty(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                             torch.tensor(atoms.numbers), torch.tensor([True] * 3), False)
    for k in range(2):
        energy, forces = layered_energy_forces(module, atoms, 2, member=k)
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
