"""D3's three-body (ATM) term on an engine's graph (local_dispersion_atm of a packaged file), run as an engine over
several ranks runs it, against the whole-system D3 (D3Dispersion.atomic_energies and autograd).

Ranks as in test_dispersion_graph: slabs of a periodic water box, each rank's own atoms the only centres, every
atom or image within the cutoffs a ghost node. Each rank computes its local atoms' CN, the ghosts get their
owners' CN, the triples at each rank's local atoms are evaluated given every node's CN and atom ID, the ghost
nodes' energy thirds and CN gradients go to their owners: per-atom energies and forces are the whole-system ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_dispersion_graph import rank_graphs, whole_system

from conftest import make_potential
from mlmd import keys as K
from mlmd.deploy.export import package
from mlmd.deploy.load import load_model
from mlmd.model.longrange import DispersionTerm

# ATM alone (s6 = s8 = 0), the three-body cutoff beyond half the box (periodic images of one atom in a triple)
ATM = dict(functional="pbe", s6=0.0, s8=0.0, three_body=True, cutoff=5.0, cutoff_cn=5.0, cutoff_three_body=6.0)


@pytest.mark.parametrize("n_ranks", [1, 3])
def test_atm_over_ranks_is_the_whole_system_atm(tmp_path, n_ranks):
    term = DispersionTerm(atomic_numbers=[1, 8], **ATM)
    card = package(make_potential(seed=1), tmp_path / "atm.pt", long_range=[term])
    assert card.has_local_dispersion_cn and card.provides(K.ENTRY_LOCAL_DISPERSION_ATM)
    model = load_model(tmp_path / "atm.pt")[0]
    atoms, positions, cell, numbers, ref, ref_forces, owner = whole_system(term, n_ranks)
    species = model.species_of(numbers)
    graphs = rank_graphs(positions, cell, owner, 6.0)
    cns = [model.local_dispersion_cn(species[nodes], ei, vec, n_local) for nodes, ei, vec, n_local in graphs]
    cn_of_atom = torch.zeros(len(atoms), dtype=torch.float64)
    for (nodes, _, _, n_local), cn in zip(graphs, cns):
        cn_of_atom[nodes[:n_local]] = cn.detach()
    leaves, energies = [], torch.zeros(len(atoms), dtype=torch.float64)
    e_total = torch.zeros((), dtype=torch.float64)
    for nodes, ei, vec, n_local in graphs:
        leaves.append(cn_of_atom[nodes].clone().requires_grad_(True))
        e = model.local_dispersion_atm(species[nodes], ei, vec, n_local, leaves[-1], torch.tensor(nodes))
        assert e.shape[0] == len(nodes)
        energies.index_add_(0, torch.tensor(nodes), e.detach())  # ghost nodes' thirds to their owners
        e_total = e_total + e.sum()
    grads = torch.autograd.grad(e_total, [positions, *leaves], retain_graph=True)
    de_dcn = torch.zeros(len(atoms), dtype=torch.float64)
    for (nodes, _, _, _), g in zip(graphs, grads[1:]):
        de_dcn.index_add_(0, torch.tensor(nodes), g)
    through = torch.autograd.grad(cns, positions, [de_dcn[nodes[:n_local]] for nodes, _, _, n_local in graphs])[0]
    forces = -(grads[0] + through)

    assert float(ref.detach().sum()) > 1e-4  # ATM is repulsive here, and present
    np.testing.assert_allclose(energies.numpy(), ref.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(forces.numpy(), ref_forces.numpy(), rtol=0, atol=1e-12)
    assert float(de_dcn.abs().max()) > 1e-6  # the CN path carries part of the forces
