"""Long-range electrostatics (mlmd.model.electrostatics): Ewald, PME and the direct sum.

Independent references: the Madelung constant of rock salt (analytic), OpenMM's NonbondedForce (another
Ewald/PME code, configured from the term's metadata), a brute-force Coulomb sum, central finite differences
for forces and stress, and the cell-choice invariance of a periodic crystal.
"""

import json
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from conftest import openmm_pme, rms, water_box
from mlmd.model.electrostatics import (
    Electrostatics,
    FixedCharges,
    choose_parameters,
    enforce_total_charge,
    mesh_dimensions,
    openmm_pme_parameters,
)
from mlmd.units import COULOMB_EV_A

DT = torch.float64
PBC = torch.tensor([True, True, True])
NO_PBC = torch.tensor([False, False, False])
MADELUNG_NACL = 1.747564594633182
WATER_Q = {8: -0.834, 1: 0.417}


def tensors(atoms: Atoms, charges: dict[int, float]):
    pos = torch.tensor(atoms.positions, dtype=DT)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    q = torch.tensor([charges[int(z)] for z in atoms.numbers], dtype=DT)
    return pos, cell, q


def energy_forces_stress(module, pos, cell, pbc, q):
    """Energy, forces = -dE/dR and stress = (1/V) dE/d(strain), the strain applied to positions and cell."""
    pos = pos.detach().clone().requires_grad_(True)
    strain = torch.zeros(3, 3, dtype=DT, requires_grad=True)
    sym = 0.5 * (strain + strain.T)
    e = module(pos + pos @ sym, cell + cell @ sym, pbc, q)
    g_pos, g_strain = torch.autograd.grad(e, [pos, strain])
    volume = abs(float(torch.linalg.det(cell)))
    return float(e.detach()), -g_pos, g_strain / volume


def rock_salt(a: float = 5.64) -> Atoms:
    return bulk("NaCl", "rocksalt", a=a, cubic=True)


def triclinic_equivalent(atoms: Atoms) -> Atoms:
    """The same crystal described by another (unimodular) choice of lattice vectors."""
    c = np.asarray(atoms.cell.array)
    new = np.array([c[0], c[1] + c[0], c[2] + c[0] - c[1]])
    out = atoms.copy()
    out.set_cell(new, scale_atoms=False)
    out.wrap()
    return out


def skewed_water(seed: int = 1) -> Atoms:
    atoms = water_box(2, seed)
    c = np.asarray(atoms.cell.array).copy()
    c[1] += 0.3 * c[0]
    c[2] += 0.2 * c[0] - 0.25 * c[1]
    atoms.set_cell(c, scale_atoms=False)
    atoms.wrap()
    return atoms


@pytest.fixture(scope="module")
def water192():
    return tensors(water_box(4, 0), WATER_Q)


@pytest.fixture(scope="module")
def water192_reference(water192):
    """A converged Ewald sum (accuracy 1e-10) of the 192-atom water box."""
    pos, cell, q = water192
    return energy_forces_stress(Electrostatics(1e-10, method="ewald").to(DT), pos, cell, PBC, q)


def test_madelung_constant_of_rock_salt():
    a = 5.64
    pos, cell, q = tensors(rock_salt(a), {11: 1.0, 17: -1.0})
    for method in ("ewald", "pme"):
        e = float(Electrostatics(1e-8, method=method).to(DT)(pos, cell, PBC, q))
        madelung = -e / 4 / COULOMB_EV_A * (a / 2)  # 4 ion pairs, nearest-neighbour distance a/2
        assert abs(madelung / MADELUNG_NACL - 1) < 1e-6, (method, madelung)


@pytest.mark.parametrize("accuracy", [1e-4, 1e-5])
def test_ewald_and_pme_meet_the_requested_accuracy(water192, water192_reference, accuracy):
    """Both methods are within the target of a converged sum, hence within it of each other."""
    pos, cell, q = water192
    e_ref, f_ref, s_ref = water192_reference
    target = accuracy * COULOMB_EV_A  # eV/Å
    results = {}
    for method in ("ewald", "pme"):
        module = Electrostatics(accuracy, method=method).to(DT)
        assert module.estimated_error(q, cell) <= target
        e, f, s = energy_forces_stress(module, pos, cell, PBC, q)
        assert rms(f - f_ref) <= target, method
        assert abs(e - e_ref) / len(q) <= target * 1.0, method  # per atom, target x 1 Å
        results[method] = (e, f)
    assert rms(results["ewald"][1] - results["pme"][1]) <= target
    assert abs(results["ewald"][0] - results["pme"][0]) / len(q) <= target


@pytest.mark.parametrize("atoms", [rock_salt(), skewed_water()], ids=["rock_salt", "skewed_water"])
def test_triclinic_cells_meet_the_requested_accuracy(atoms):
    q_map = {11: 1.0, 17: -1.0, **WATER_Q}
    atoms = atoms.repeat((2, 1, 1)) if len(atoms) < 10 else atoms
    atoms = triclinic_equivalent(atoms)
    atoms.rattle(0.05, seed=3)
    pos, cell, q = tensors(atoms, q_map)
    e_ref, f_ref, _ = energy_forces_stress(Electrostatics(1e-10, method="ewald").to(DT), pos, cell, PBC, q)
    accuracy = 1e-5
    for method in ("ewald", "pme"):
        e, f, _ = energy_forces_stress(Electrostatics(accuracy, method=method).to(DT), pos, cell, PBC, q)
        assert rms(f - f_ref) <= accuracy * COULOMB_EV_A, method
        assert abs(e - e_ref) / len(q) <= accuracy * COULOMB_EV_A, method


@pytest.mark.parametrize("method,accuracy,rtol", [("ewald", 1e-9, 1e-8), ("pme", 1e-6, 1e-6)])
def test_energy_per_formula_unit_independent_of_the_cell(method, accuracy, rtol):
    module = Electrostatics(accuracy, method=method).to(DT)
    base = rock_salt()
    base.rattle(0.05, seed=1)
    cells = {
        "conventional": base,
        "supercell": base.repeat((2, 1, 1)),
        "triclinic": triclinic_equivalent(base),
        "triclinic_supercell": triclinic_equivalent(base.repeat((1, 2, 1))),
    }
    per_unit = {}
    for name, atoms in cells.items():
        pos, cell, q = tensors(atoms, {11: 1.0, 17: -1.0})
        per_unit[name] = float(module(pos, cell, PBC, q)) / (len(atoms) // 2)
    ref = per_unit["conventional"]
    for name, value in per_unit.items():
        assert abs(value / ref - 1) < rtol, (name, value, ref)
    # the primitive fcc cell of the unrattled crystal gives the same energy per ion pair as the cubic one
    e_prim = float(module(*tensors(bulk("NaCl", "rocksalt", a=5.64), {11: 1.0, 17: -1.0})[:2], PBC,
                          torch.tensor([1.0, -1.0], dtype=DT)))
    pos, cell, q = tensors(rock_salt(), {11: 1.0, 17: -1.0})
    assert abs(e_prim / (float(module(pos, cell, PBC, q)) / 4) - 1) < rtol


def test_matches_openmm_configured_from_metadata(water192, water192_reference):
    """OpenMM's PME, set up from the term's metadata (alpha, cutoff, mesh), agrees to the requested accuracy."""
    pos, cell, q = water192
    e_ref, f_ref, _ = water192_reference
    accuracy = 1e-5
    meta = Electrostatics(accuracy, r_cut=6.0).metadata()  # OpenMM needs r_cut <= half the 12.4 Å box
    meta = json.loads(json.dumps(meta))  # what a packaged file stores
    settings = openmm_pme_parameters(meta, cell)
    assert [settings[k] for k in ("nx", "ny", "nz")] == mesh_dimensions(meta, cell)
    e_mm, f_mm = openmm_pme(pos, cell, q, settings)
    target = accuracy * COULOMB_EV_A
    assert abs(e_mm - e_ref) / len(q) <= target
    assert rms(f_mm - f_ref) <= target


def test_direct_sum_matches_brute_force():
    atoms = water_box(2, 4)
    pos, _, q = tensors(atoms, WATER_Q)
    module = Electrostatics(method="direct").to(DT)
    e = float(module(pos, torch.zeros(3, 3, dtype=DT), NO_PBC, q))
    x = atoms.positions
    qq = q.numpy()
    ref = 0.0
    for i in range(len(x)):
        for j in range(i):
            ref += qq[i] * qq[j] / np.linalg.norm(x[i] - x[j])
    assert abs(e - COULOMB_EV_A * ref) < 1e-10 * abs(e)
    # auto picks the direct sum without pbc; atomic energies add up
    auto = Electrostatics().to(DT)
    atomic = auto.atomic_energies(pos, torch.zeros(3, 3, dtype=DT), NO_PBC, q)
    assert abs(float(atomic.sum()) - e) < 1e-10


def finite_differences(module, pos, cell, pbc, q, atoms_checked, h=1e-4, h_strain=1e-5):
    def energy(p, c):
        return float(module(p, c, pbc, q))

    forces = []
    for a in atoms_checked:
        row = []
        for k in range(3):
            dp = torch.zeros_like(pos)
            dp[a, k] = h
            row.append(-(energy(pos + dp, cell) - energy(pos - dp, cell)) / (2 * h))
        forces.append(row)
    stress = np.zeros((3, 3))
    volume = abs(float(torch.linalg.det(cell)))
    for a in range(3):
        for b in range(a, 3):
            eps = torch.zeros(3, 3, dtype=DT)
            eps[a, b] = eps[b, a] = h_strain / (1 if a == b else 2)
            plus = energy(pos + pos @ eps, cell + cell @ eps)
            minus = energy(pos - pos @ eps, cell - cell @ eps)
            stress[a, b] = stress[b, a] = (plus - minus) / (2 * h_strain) / volume
    return torch.tensor(forces, dtype=DT), torch.tensor(stress, dtype=DT)


@pytest.mark.parametrize("method", ["ewald", "pme", "direct"])
def test_forces_and_stress_match_finite_differences(method):
    atoms = skewed_water(5)
    atoms.rattle(0.05, seed=6)
    pos, cell, q = tensors(atoms, WATER_Q)
    pbc = NO_PBC if method == "direct" else PBC
    # tight settings: the real-space cutoff and (PME) the kinks at mesh planes stay below the FD resolution
    module = Electrostatics(1e-9, method=method, smearing=1.0, grid_spacing=0.2).to(DT)
    e, f, s = energy_forces_stress(module, pos, cell, pbc, q)
    checked = [0, 1, 5, 17]
    f_fd, s_fd = finite_differences(module, pos, cell, pbc, q, checked)
    assert torch.allclose(f[checked], f_fd, atol=2e-6, rtol=1e-6), (f[checked] - f_fd).abs().max()
    if method != "direct":
        assert torch.allclose(s, s_fd, atol=2e-7, rtol=1e-6), (s - s_fd).abs().max()
        assert float(s.abs().max()) > 1e-3  # a real check, not zeros against zeros


def test_predicted_charges_are_neutralised():
    torch.manual_seed(0)
    raw = torch.randn(10, dtype=DT, requires_grad=True)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    total = torch.tensor([0.0, 1.0, -2.0], dtype=DT)
    scripted = torch.jit.script(enforce_total_charge)
    for weights in (None, torch.rand(10, dtype=DT) + 0.5):
        for fn in (enforce_total_charge, scripted):
            q = fn(raw, total, batch, weights)
            sums = torch.zeros(3, dtype=DT).index_add(0, batch, q)
            assert torch.allclose(sums, total, atol=1e-12, rtol=0)
            # the correction is proportional to the weights inside each structure
            shift = (raw - q).detach()
            w = torch.ones(10, dtype=DT) if weights is None else weights
            for b in range(3):
                ratio = shift[batch == b] / w[batch == b]
                assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-12)
    # differentiable: the network head trains through it (a neutral structure has a null direction)
    q = enforce_total_charge(raw, total, batch)
    (grad,) = torch.autograd.grad((q[:3] * torch.arange(3.0, dtype=DT)).sum(), raw)
    assert torch.allclose(grad[:3], torch.tensor([-1.0, 0.0, 1.0], dtype=DT), atol=1e-12)
    # single structure, 0-d total, then usable by the periodic term
    atoms = water_box(2, 0)
    pos, cell, _ = tensors(atoms, WATER_Q)
    q1 = enforce_total_charge(torch.randn(len(atoms), dtype=DT), torch.tensor(0.0, dtype=DT))
    assert abs(float(q1.sum())) < 1e-12
    assert math.isfinite(float(Electrostatics(method="ewald").to(DT)(pos, cell, PBC, q1)))


def test_fixed_charges_per_element():
    fixed = FixedCharges(WATER_Q)
    numbers = torch.tensor([8, 1, 1, 8, 1, 1])
    assert fixed(numbers).tolist() == [-0.834, 0.417, 0.417, -0.834, 0.417, 0.417]
    with pytest.raises(ValueError, match="no fixed charge for element Na"):
        fixed(torch.tensor([8, 11]))
    scripted = torch.jit.script(fixed)
    assert torch.equal(scripted(numbers), fixed(numbers))
    with pytest.raises(torch.jit.Error, match="no fixed charge for element Na"):
        scripted(torch.tensor([11]))


def test_charged_periodic_cell_is_refused_unless_neutralised():
    pos, cell, q = tensors(rock_salt(), {11: 1.0, 17: -1.0})
    q_charged = q.clone()
    q_charged[0] = 2.0  # net charge +1 e
    with pytest.raises(ValueError, match="net charge of 1.0 e"):
        Electrostatics(method="ewald").to(DT)(pos, cell, PBC, q_charged)
    with pytest.raises(ValueError, match="net charge"):
        Electrostatics(method="pme").to(DT)(pos, cell, PBC, q_charged)
    # with the uniform neutralising background the energy is well defined: independent of the splitting
    def charged_energy(**kw):
        return float(Electrostatics(neutralizing_background=True, **kw).to(DT)(pos, cell, PBC, q_charged))

    e1 = charged_energy(accuracy=1e-9, method="ewald", smearing=0.8)
    e2 = charged_energy(accuracy=1e-9, method="ewald", smearing=1.4)
    e3 = charged_energy(accuracy=1e-9, method="pme", smearing=1.0, grid_spacing=0.15)
    assert abs(e1 - e2) < 1e-6  # without the background term they would differ by 0.17 eV
    assert abs(e1 - e3) < 1e-5
    # molecules may carry a net charge
    e = Electrostatics().to(DT)(torch.tensor([[0.0, 0, 0], [0, 0, 2.0]], dtype=DT), cell, NO_PBC,
                                torch.tensor([1.0, 1.0], dtype=DT))
    assert abs(float(e) - COULOMB_EV_A / 2.0) < 1e-12


def test_bad_input_gets_clear_errors():
    pos, cell, q = tensors(rock_salt(), {11: 1.0, 17: -1.0})
    module = Electrostatics().to(DT)
    with pytest.raises(ValueError, match="pbc all True"):
        module(pos, cell, torch.tensor([True, True, False]), q)
    with pytest.raises(ValueError, match="zero volume"):
        module(pos, torch.zeros(3, 3, dtype=DT), PBC, q)
    with pytest.raises(ValueError, match="dtype"):
        module(pos.float(), cell.float(), PBC, q.float())
    with pytest.raises(ValueError, match="one per atom"):
        module(pos, cell, PBC, q[:-1])
    with pytest.raises(ValueError, match="non-periodic"):
        Electrostatics(method="direct").to(DT)(pos, cell, PBC, q)
    with pytest.raises(ValueError, match="unknown electrostatics method"):
        Electrostatics(method="p4m")
    with pytest.raises(ValueError, match="same position"):
        module(torch.zeros(2, 3, dtype=DT), cell, NO_PBC, torch.tensor([1.0, -1.0], dtype=DT))


def test_torchscript_round_trip_and_metadata(tmp_path, water192):
    pos, cell, q = water192
    for method in ("ewald", "pme", "auto"):
        module = Electrostatics(1e-5, method=method, ewald_max_atoms=100).to(DT)
        path = tmp_path / f"{method}.pt"
        torch.jit.script(module).save(str(path))
        loaded = torch.jit.load(str(path))
        for p, c, pbc in ((pos, cell, PBC), (pos[:30], cell, NO_PBC)):
            assert float(loaded(p, c, pbc, q[: len(p)] - q[: len(p)].mean())) == float(
                module(p, c, pbc, q[: len(p)] - q[: len(p)].mean())
            )
        # the metadata is plain JSON and rebuilds the same term
        meta = json.loads(json.dumps(module.metadata()))
        rebuilt = Electrostatics(params=meta).to(DT)
        assert float(rebuilt(pos, cell, PBC, q)) == float(module(pos, cell, PBC, q))
        for key in ("method", "smearing", "alpha", "r_cut", "k_cutoff", "grid_spacing", "interpolation_order",
                    "accuracy"):
            assert key in meta
    # float32: close to float64
    m32 = Electrostatics(1e-5, method="pme").to(torch.float32)
    e32 = float(m32(pos.float(), cell.float(), PBC, q.float()))
    e64 = float(Electrostatics(1e-5, method="pme").to(DT)(pos, cell, PBC, q))
    assert abs(e32 - e64) < 1e-5 * abs(e64)


def test_parameter_choice_follows_the_accuracy():
    loose = choose_parameters(1e-3)
    tight = choose_parameters(1e-6)
    assert tight["smearing"] < loose["smearing"]
    assert tight["k_cutoff"] > loose["k_cutoff"]
    assert tight["grid_spacing"] < loose["grid_spacing"]
    given = choose_parameters(1e-5, smearing=1.2, r_cut=None)
    assert given["smearing"] == 1.2 and given["r_cut"] > 1.2
    override = choose_parameters(1e-5, grid_spacing=0.3, k_cutoff=3.0)
    assert override["grid_spacing"] == 0.3 and override["k_cutoff"] == 3.0


@pytest.mark.parametrize("method, assignment", [("pme", "lagrange"), ("pme", "bspline"), ("ewald", "lagrange")])
def test_charge_derivatives_for_training(method, assignment):
    """The Coulomb term puts the positions' gradient back by hand (real-space pairs and PME mesh weights taken
    without autograd): dE/dq and
    the mixed derivative d(F . v)/dq that force-loss training of predicted charges needs, against central
    finite differences in the charges (a background keeps the perturbed cells neutral); forces also against finite
    differences in the positions."""
    gen = torch.Generator().manual_seed(4)
    cell = torch.tensor([[9.0, 0.0, 0.0], [2.5, 8.0, 0.0], [-1.5, 1.0, 10.0]], dtype=torch.float64)
    positions = torch.rand(40, 3, generator=gen, dtype=torch.float64) @ cell
    charges = torch.randn(40, generator=gen, dtype=torch.float64)
    charges = charges - charges.mean()
    params = choose_parameters(1e-5, method, r_cut=4.0, pme_assignment=assignment, neutralizing_background=True)
    module = Electrostatics(params=params).to(torch.float64)
    pbc = torch.tensor([True, True, True])
    v = torch.randn(positions.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def forces_dot_v(q: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = positions.detach().clone().requires_grad_(True)
        e = module(x, cell, pbc, q)
        f = -torch.autograd.grad(e, x, create_graph=create_graph)[0]
        return e, (f * v).sum()

    q = charges.detach().clone().requires_grad_(True)
    e, fv = forces_dot_v(q, True)
    de_dq = torch.autograd.grad(e, q, retain_graph=True)[0]
    dfv_dq = torch.autograd.grad(fv, q)[0]
    h = 1e-5
    for k in (0, 7, 23):
        dq = torch.zeros_like(charges)
        dq[k] = h
        e_p, fv_p = forces_dot_v(charges + dq, False)
        e_m, fv_m = forces_dot_v(charges - dq, False)
        assert abs(float((e_p - e_m).detach() / (2 * h)) - float(de_dq[k])) < 1e-7
        assert abs(float((fv_p - fv_m) / (2 * h)) - float(dfv_dq[k])) < 1e-6 * max(1.0, abs(float(dfv_dq[k])))
    x = positions.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(module(x, cell, pbc, charges), x)[0]
    for atom, axis in ((0, 0), (13, 1), (31, 2)):
        d = torch.zeros_like(positions)
        d[atom, axis] = h
        fd = (float(module(positions.detach() + d, cell, pbc, charges))
              - float(module(positions.detach() - d, cell, pbc, charges))) / (2 * h)
        assert abs(fd - float(g[atom, axis])) < 1e-7
