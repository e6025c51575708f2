"""Smooth PME (``pme_assignment="bspline"``): the promised force accuracy against a converged Ewald sum, its
error bound against the measured k-space error, exact gradients (finite differences), the B-spline weights and
moduli against their closed forms, TorchScript, tuning, and the engines' mesh."""

import math

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import openmm_pme, rms, water_box
from mlmd import ewald_params as ep
from mlmd.model import pme_mesh
from mlmd.model.electrostatics import Electrostatics
from mlmd.units import COULOMB_EV_A

DT = torch.float64
PBC = torch.tensor([True, True, True])
WATER_Q = {8: -0.834, 1: 0.417}


def structure(name: str):
    if name == "water":
        atoms, qmap = water_box(4, 0), WATER_Q
    elif name == "rock_salt_triclinic":  # primitive fcc cell: 60-degree angles
        atoms, qmap = bulk("NaCl", "rocksalt", a=5.64) * (3, 3, 3), {11: 1.0, 17: -1.0}
    else:  # wurtzite, hexagonal cell, charges +-2 (Q = 1.2: far above the reference density)
        atoms, qmap = bulk("ZnO", "wurtzite", a=3.25, c=5.2) * (3, 3, 2), {30: 2.0, 8: -2.0}
    atoms.rattle(0.08, seed=5)
    pos = torch.tensor(atoms.positions, dtype=DT)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    q = torch.tensor([qmap[int(z)] for z in atoms.numbers], dtype=DT)
    return pos, cell, q


def energy_forces(module, pos, cell, q):
    pos = pos.detach().clone().requires_grad_(True)
    e = module(pos, cell, PBC, q)
    return float(e.detach()), -torch.autograd.grad(e, pos)[0]


@pytest.mark.parametrize("name", ["water", "rock_salt_triclinic", "zno"])
@pytest.mark.parametrize("accuracy,r_cut", [(1e-4, 6.0), (1e-5, 6.0), (1e-4, 5.0)])
def test_bspline_pme_meets_the_accuracy_for_the_structure(name, accuracy, r_cut):
    pos, cell, q = structure(name)
    _, f_ref = energy_forces(Electrostatics(1e-10, method="ewald").to(DT), pos, cell, q)
    params = ep.choose_parameters(accuracy, "pme", r_cut=r_cut, charges=q, cell=cell, pme_assignment="bspline")
    lagrange = ep.choose_parameters(accuracy, "pme", r_cut=r_cut, charges=q, cell=cell)
    assert params["grid_spacing"] > 1.7 * lagrange["grid_spacing"]  # the point of it: a coarser mesh
    _, f = energy_forces(Electrostatics(params=params).to(DT), pos, cell, q)
    assert rms(f - f_ref) <= accuracy * COULOMB_EV_A


@pytest.mark.parametrize("name", ["water", "rock_salt_triclinic", "zno"])
@pytest.mark.parametrize("order", [4, 6])
def test_error_bound_holds_for_the_kspace_part(name, order):
    """PME against Ewald with the same splitting (identical real space): the k-space error alone stays below
    ep.error_pme_kspace for coarse meshes too (h/sigma up to 0.9)."""
    pos, cell, q = structure(name)
    sigma = 1.3
    base = ep.choose_parameters(1e-4, "ewald", r_cut=5.0, smearing=sigma)
    qf = ep.q_factor(float((q * q).sum()), len(q), abs(float(torch.linalg.det(cell))))
    base["k_cutoff"] = ep.k_cutoff_for(qf, 1e-12, sigma)
    _, f_ewald = energy_forces(Electrostatics(params=base).to(DT), pos, cell, q)
    for ratio in (0.4, 0.65, 0.9):
        params = {**base, "method": "pme", "grid_spacing": ratio * sigma, "interpolation_order": order,
                  "pme_assignment": "bspline"}
        _, f = energy_forces(Electrostatics(params=params).to(DT), pos, cell, q)
        bound = ep.estimate_errors(params, q, cell)["pme_kspace"]
        assert rms(f - f_ewald) <= bound, ratio


def test_forces_and_stress_are_the_exact_gradient():
    pos, cell, q = structure("rock_salt_triclinic")
    pos, q = pos[:16], q[:16]  # a sub-lattice of a neutral crystal is not neutral: take 8 + 8 ions
    q = torch.where(q > 0, 1.0, -1.0).to(DT)
    assert float(q.sum()) == 0.0
    params = ep.choose_parameters(1e-4, "pme", r_cut=5.0, pme_assignment="bspline")
    module = Electrostatics(params=params).to(DT)
    strain = torch.zeros(3, 3, dtype=DT, requires_grad=True)
    x = pos.clone().requires_grad_(True)
    e = module(x + x @ strain, cell + cell @ strain, PBC, q)
    g_pos, g_strain = torch.autograd.grad(e, [x, strain])
    h = 1e-5
    for atom, axis in ((0, 0), (5, 2), (11, 1)):
        d = torch.zeros_like(pos)
        d[atom, axis] = h
        fd = (float(module(pos + d, cell, PBC, q)) - float(module(pos - d, cell, PBC, q))) / (2 * h)
        assert abs(fd - float(g_pos[atom, axis])) < 1e-6
    for a, b in ((0, 0), (1, 2)):
        eps = torch.zeros(3, 3, dtype=DT)
        eps[a, b] = h
        fd = (float(module(pos + pos @ eps, cell + cell @ eps, PBC, q))
              - float(module(pos - pos @ eps, cell - cell @ eps, PBC, q))) / (2 * h)
        assert abs(fd - float(g_strain[a, b])) < 1e-5


def test_cubic_bspline_weights_and_moduli_match_closed_forms():
    # order 4: node weights of an atom at offset x from the midpoint of its two nearest nodes
    c = pme_mesh.bspline_coefficients(4)
    x = torch.linspace(-0.5, 0.49, 7, dtype=DT)
    w = torch.stack([x.pow(k) for k in range(4)], dim=-1) @ c.T
    t = x + 0.5  # distance past the node floor(u)
    expected = torch.stack([(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6,
                            (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6], dim=-1)
    assert torch.allclose(w, expected, atol=1e-14)
    # |b(m)|^2: the squared DFT of the spline at the integers, from numpy's FFT
    for order in (4, 6):
        values = pme_mesh.bspline_node_values(order)
        size = 12
        ring = np.zeros(size)
        for k, v in enumerate(values.numpy()):
            ring[(k - (order // 2 - 1)) % size] = v
        expected = np.abs(np.fft.fft(ring)) ** 2
        assert np.allclose(pme_mesh.bspline_moduli(size, values, size).numpy(), expected, atol=1e-14)
    assert math.isclose(float(pme_mesh.bspline_node_values(4)[1]), 2.0 / 3.0)


def test_torchscript_tune_and_engine_mesh(tmp_path):
    pos, cell, q = structure("water")
    params = ep.choose_parameters(1e-4, "pme", r_cut=6.0, pme_assignment="bspline")
    module = Electrostatics(params=params).to(DT)
    e, _ = energy_forces(module, pos, cell, q)
    scripted = torch.jit.script(module)
    scripted.save(str(tmp_path / "e.pt"))
    loaded = torch.jit.load(str(tmp_path / "e.pt"))
    assert abs(float(loaded(pos, cell, PBC, q)) - e) < 1e-10
    meta = module.metadata()
    assert meta["pme_assignment"] == "bspline"
    # OpenMM's PME mesh follows its own (order-5) rule
    qf = meta["error_estimate_q_factor"]
    assert meta["engine_grid_spacing"] == ep.openmm_grid_spacing_for(qf, 1e-4 / math.sqrt(2.0), meta["smearing"])
    mm = ep.openmm_pme_parameters(meta, cell)
    assert [mm["nx"], mm["ny"], mm["nz"]] == ep.mesh_dimensions({**meta, "grid_spacing": meta["engine_grid_spacing"]},
                                                                  cell)
    # tuning keeps the assignment and its error rule
    qf = loaded.tune(q, cell)
    part = 1e-4 / math.sqrt(2.0)
    assert math.isclose(loaded.pme.grid_spacing,
                        ep.grid_spacing_for(qf, part, loaded.smearing, 6, "bspline"), rel_tol=1e-12)
    with pytest.raises(ValueError, match="pme_assignment"):
        ep.choose_parameters(1e-4, pme_assignment="spline")


def test_training_config_selects_the_assignment():
    from mlmd.config import LongRangeConfig
    from mlmd.model.longrange import build_long_range, long_range_metadata

    cfg = LongRangeConfig(electrostatics="fixed", charges={"O": -0.8, "H": 0.4}, coulomb_cutoff=6.0,
                          pme_assignment="bspline")
    meta = long_range_metadata(build_long_range(cfg, [1, 8]))["electrostatics"]
    assert meta["pme_assignment"] == "bspline" and meta["r_cut"] == 6.0
    default = long_range_metadata(build_long_range(LongRangeConfig(electrostatics="fixed", charges={"O": -0.8,
                                                                                                   "H": 0.4}),
                                                   [1, 8]))["electrostatics"]
    assert "pme_assignment" not in default and default["r_cut"] == 8.0


@pytest.mark.parametrize("name", ["water", "rock_salt_cubic", "zno"])
@pytest.mark.parametrize("accuracy", [1e-4, 1e-5])
def test_openmm_pme_from_bspline_parameters_meets_the_accuracy(name, accuracy):
    """OpenMM's NonbondedForce PME (order-5 B-splines) set up from a B-spline model's parameters
    (openmm_pme_parameters: engine_grid_spacing) is within the target of a converged Ewald sum."""


    if name == "rock_salt_cubic":  # OpenMM takes reduced (lower-triangular) boxes only
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (3, 3, 3)
        atoms.rattle(0.08, seed=5)
        pos = torch.tensor(atoms.positions, dtype=DT)
        cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
        q = torch.tensor([1.0 if z == 11 else -1.0 for z in atoms.numbers], dtype=DT)
    else:
        pos, cell, q = structure(name)
    _, f_ref = energy_forces(Electrostatics(1e-10, method="ewald").to(DT), pos, cell, q)
    r_cut = min(6.0, 0.5 * min(ep.perpendicular_heights(cell)) - 0.01)  # OpenMM: cutoff <= half the box
    params = ep.choose_parameters(accuracy, "pme", r_cut=r_cut, charges=q, cell=cell, pme_assignment="bspline")
    _, f = openmm_pme(pos, cell, q, ep.openmm_pme_parameters(params, cell))
    assert rms(f - f_ref) <= accuracy * COULOMB_EV_A
