"""Locality, extensivity and smoothness at the cutoff (the short-range contract)."""

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import make_potential, water_box
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator


@pytest.fixture(scope="module")
def calc(model_files):
    return MLMDCalculator(model_files["float64"])


def test_two_distant_copies_give_twice_the_energy(calc):
    a = water_box(2, 3)
    frag = Atoms(a.numbers, positions=a.positions)
    frag.calc = calc
    e1 = frag.get_potential_energy()
    far = frag.copy()
    far.positions += np.array([40.0, 0.0, 0.0])  # far beyond r_cut (3.5 Å) and any interaction range
    both = frag + far
    both.calc = calc
    assert abs(both.get_potential_energy() - 2 * e1) < 1e-10 * abs(e1)
    # and a separated fragment feels no force from the other
    f = both.get_forces()
    frag_f = frag.get_forces()
    np.testing.assert_allclose(f[: len(frag)], frag_f, atol=1e-10)


def test_energy_and_forces_continuous_across_cutoff(tmp_path):
    pot = make_potential(atomic_numbers=(8,), r_cut=3.0, n_layers=1)
    path = tmp_path / "o.pt"
    package(pot, path)
    calc = MLMDCalculator(path)
    rs = np.linspace(2.9, 3.1, 401)
    es, fs = [], []
    for r in rs:
        a = Atoms("OO", positions=[[0, 0, 0], [r, 0, 0]])
        a.calc = calc
        es.append(a.get_potential_energy())
        fs.append(a.get_forces()[1, 0])
    es, fs = np.array(es), np.array(fs)
    beyond = rs >= 3.0
    # constant energy and zero force once the neighbour is out of range
    assert np.ptp(es[beyond]) < 1e-12
    assert np.max(np.abs(fs[beyond])) < 1e-12
    # no jump as it crosses: steps in E and F shrink with the spacing (C2 envelope: F ~ (rc - r)^2)
    assert np.max(np.abs(np.diff(es))) < 1e-5 * max(1.0, np.max(np.abs(es - es[-1])) * 100)
    inside = (rs > 2.99) & (rs < 3.0)
    assert np.max(np.abs(fs[inside])) < 1e-4 * max(np.max(np.abs(fs)), 1e-3)
    # force is minus the derivative of the energy along the path
    dE = np.gradient(es, rs)
    np.testing.assert_allclose(-dE[5:-5], fs[5:-5], atol=2e-6 * max(1.0, np.max(np.abs(fs))))


def test_envelope_is_c2_at_cutoff():
    from mlmd.model.radial import PolynomialEnvelope

    env = PolynomialEnvelope(2.0, p=6)
    r = torch.tensor([2.0 - 1e-6], dtype=torch.float64, requires_grad=True)
    u = env(r)
    (d1,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    assert abs(float(u.detach())) < 1e-12 and abs(float(d1.detach())) < 1e-8 and abs(float(d2)) < 1e-3
    assert float(env(torch.tensor([0.0], dtype=torch.float64))) == 1.0
