"""ACSF and SOAP descriptors and the Behler-Parrinello models built on them.

Values are checked against DScribe (an independent implementation) after matching its conventions (see the
docstrings of mlmd.model.acsf and mlmd.model.soap), derivatives against finite differences and DScribe's analytic SOAP
derivatives, and a briefly trained BP model against its packaged file in ASE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from dscribe import descriptors as dscribe

from conftest import make_bp, water_box
from mlmd.data.graph import neighbor_list
from mlmd.model.acsf import ACSF, acsf_parameters, edge_pairs
from mlmd.model.behler_parrinello import BehlerParrinelloPotential
from mlmd.model.soap import SOAP
from mlmd.model.soap_basis import RealSolidHarmonics

G2 = [[0.0, 0.0], [0.5, 1.0], [1.2, 2.3], [0.3, 3.1]]
G4 = [[0.05, 1.0, 1.0], [0.1, 2.0, -1.0], [0.02, 4.0, 1.0], [0.3, 2.5, -1.0], [0.01, 1.0, -1.0]]


def graph(atoms: Atoms, numbers: list[int], cutoff: float, positions: torch.Tensor | None = None):
    """(species, edge_index, edge_vectors) in float64; edge vectors from `positions` when given (for autograd)."""
    cell = np.asarray(atoms.cell.array)
    ei, sh = neighbor_list(atoms.positions, cell, np.asarray(atoms.pbc), cutoff)
    pos = torch.as_tensor(atoms.positions) if positions is None else positions
    shift = torch.as_tensor(sh @ cell)
    ei_t = torch.as_tensor(ei)
    vec = pos[ei_t[1]] - pos[ei_t[0]] + shift
    table = {z: k for k, z in enumerate(numbers)}
    species = torch.tensor([table[int(z)] for z in atoms.numbers])
    return species, ei_t, vec


def dscribe_acsf_columns(ref: np.ndarray, n_species: int, n_g2: int) -> np.ndarray:
    """DScribe writes [G1, G2...] per element, then the G4 pair blocks; drop its G1 columns."""
    g2 = [ref[:, e * (1 + n_g2) + 1 : (e + 1) * (1 + n_g2)] for e in range(n_species)]
    return np.concatenate(g2 + [ref[:, n_species * (1 + n_g2) :]], axis=1)


def assert_close_relative(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-6) -> None:
    # elementwise relative, with components that vanish (|ref| tiny against the row scale) compared absolutely
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * scale)


def periodic_cells() -> list[Atoms]:
    rng = np.random.default_rng(3)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.symbols[[1, 3]] = "Al"
    cu.positions += rng.normal(0, 0.1, cu.positions.shape)
    tric = Atoms(
        "CuAlCuCu",
        scaled_positions=rng.uniform(0, 1, (4, 3)),
        cell=[[4.1, 0.0, 0.0], [1.2, 3.9, 0.0], [0.7, -0.9, 4.4]],
        pbc=True,
    )
    return [cu, tric, water_box(2, seed=1)]


def molecules() -> list[Atoms]:
    water_dimer = molecule("H2O")
    other = molecule("H2O")
    other.positions += [2.6, 0.4, 0.3]
    water_dimer += other
    return [molecule("CH3CH2OH"), molecule("CH3COOH"), water_dimer]


# ---------------------------------------------------------------------------------------------- DScribe values
@pytest.mark.parametrize("periodic", [False, True])
def test_acsf_matches_dscribe(periodic):
    systems = periodic_cells() if periodic else molecules()
    for atoms in systems:
        numbers = sorted(set(int(z) for z in atoms.numbers))
        r_cut = 4.5
        ref = dscribe.ACSF(species=numbers, r_cut=r_cut, g2_params=G2, g4_params=G4, periodic=periodic).create(atoms)
        ref = dscribe_acsf_columns(ref, len(numbers), len(G2))
        acsf = ACSF(len(numbers), r_cut, G2, G4, cutoff="cosine")
        out = acsf(*graph(atoms, numbers, r_cut)).numpy()
        assert out.shape == ref.shape == (len(atoms), acsf.n_features)
        assert np.abs(out[:, len(numbers) * len(G2) :]).max() > 1e-3  # the angular part is really exercised
        assert_close_relative(out, ref)


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("weighting", ["none", "poly"])
@pytest.mark.parametrize("rbf", ["gto", "polynomial"])
def test_soap_matches_dscribe(periodic, weighting, rbf):
    """Full float64: gto to 1e-10 of the largest value (a float32 prefactor gave 2e-8); polynomial to 2e-10,
    the accuracy of DScribe's own basis (it takes sqrtm(inv(S)) of an overlap with condition number 8e8:
    S^-1/2 S S^-1/2 = 1 to 6e-11; mlmd's, at 40 digits, to 1e-16) and its 4 pi^2 = 39.478417604."""
    systems = periodic_cells() if periodic else molecules()
    r_cut, n_max, l_max, sigma, m = 4.0, 5, 5, 0.45, 2
    dscribe_weighting = {"function": "poly", "r0": r_cut, "c": 1.0, "m": m} if weighting == "poly" else None
    for atoms in systems:
        numbers = sorted(set(int(z) for z in atoms.numbers))
        ref = dscribe.SOAP(
            species=numbers, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma, weighting=dscribe_weighting,
            periodic=periodic, rbf=rbf,
        ).create(atoms)
        soap = SOAP(len(numbers), r_cut, n_max, l_max, sigma, weighting=weighting, poly_m=m, rbf=rbf)
        out = soap(*graph(atoms, numbers, soap.cutoff)).numpy()
        assert out.shape == ref.shape == (len(atoms), soap.n_features)
        assert_close_relative(out, ref, rtol=1e-10 if rbf == "gto" else 2e-10)


def test_soap_derivatives_match_dscribe():
    """Autograd through SOAP against DScribe's analytic derivatives (centres moving with their atoms)."""
    atoms = molecule("CH3CH2OH")
    numbers = sorted(set(int(z) for z in atoms.numbers))
    r_cut, n_max, l_max, sigma = 3.5, 3, 3, 0.5
    ds = dscribe.SOAP(species=numbers, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma)
    ref_d, ref = ds.derivatives(atoms, method="analytical", attach=True)  # [centres, atoms, 3, features]
    soap = SOAP(len(numbers), r_cut, n_max, l_max, sigma, weighting="none")
    pos = torch.as_tensor(atoms.positions).clone().requires_grad_(True)
    out = soap(*graph(atoms, numbers, soap.cutoff, pos))
    assert_close_relative(out.detach().numpy(), ref, rtol=1e-10)
    # the full Jacobian through random projections w: d(sum w * D)/dR = sum w * dD/dR (one backward each)
    rng = np.random.default_rng(0)
    for _ in range(4):
        w = rng.normal(size=ref.shape)
        (grad,) = torch.autograd.grad((out * torch.as_tensor(w)).sum(), pos, retain_graph=True)
        assert_close_relative(grad.numpy(), np.einsum("cf,cajf->aj", w, ref_d), rtol=1e-10)


@pytest.mark.parametrize("periodic", [False, True])
def test_polynomial_soap_derivatives_match_dscribe_and_finite_differences(periodic):
    """DScribe has only numerical derivatives for the polynomial basis (its own finite differences, ~1e-6):
    autograd against them, and against central differences in float64 to 1e-8."""
    atoms = periodic_cells()[1] if periodic else molecule("CH3CH2OH")
    numbers = sorted(set(int(z) for z in atoms.numbers))
    r_cut, n_max, l_max, sigma = 3.5, 3, 3, 0.5
    ds = dscribe.SOAP(species=numbers, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma, rbf="polynomial",
                      periodic=periodic)
    ref_d, ref = ds.derivatives(atoms, method="numerical", attach=True)
    soap = SOAP(len(numbers), r_cut, n_max, l_max, sigma, weighting="none", rbf="polynomial")
    pos = torch.as_tensor(atoms.positions).clone().requires_grad_(True)
    out = soap(*graph(atoms, numbers, soap.cutoff, pos))
    assert_close_relative(out.detach().numpy(), ref, rtol=2e-10)
    rng = np.random.default_rng(0)
    w = torch.as_tensor(rng.normal(size=ref.shape))
    (grad,) = torch.autograd.grad((out * w).sum(), pos)
    assert_close_relative(grad.numpy(), np.einsum("cf,cajf->aj", w.numpy(), ref_d), rtol=1e-5)
    h = 1e-5
    fd = np.zeros_like(atoms.positions)
    base = torch.as_tensor(atoms.positions)
    for a in range(len(atoms)):
        for k in range(3):
            step = torch.zeros_like(base)
            step[a, k] = h
            plus = (soap(*graph(atoms, numbers, soap.cutoff, base + step)) * w).sum()
            minus = (soap(*graph(atoms, numbers, soap.cutoff, base - step)) * w).sum()
            fd[a, k] = float(plus - minus) / (2 * h)
    assert_close_relative(grad.numpy(), fd, rtol=1e-8)


def test_polynomial_radial_integrals_against_mpmath():
    """The radial integrals of the polynomial basis (100-point Gauss-Legendre, series/recurrence Bessel functions)
    against mpmath's adaptive quadrature with its own i_l, at 20 digits."""
    import mpmath

    from mlmd.model.soap_basis import polynomial_basis

    r_cut, n_max, l_max, sigma = 4.0, 4, 6, 0.45
    eta = 1.0 / (2 * sigma**2)
    soap = SOAP(2, r_cut, n_max, l_max, sigma, weighting="none", rbf="polynomial")
    rj = np.array([0.97, 3.1, 5.2])
    ours = soap.radial(torch.as_tensor(rj**2)).numpy()  # [E, L+1, n], per r^l Y_lm
    betas = polynomial_basis(r_cut, n_max)
    scale = np.abs(ours).max()
    with mpmath.workdps(20):
        for e, r0 in enumerate(rj):
            for l in [0, 1, 3, 6]:
                def i_l(x, l=l):
                    return mpmath.sqrt(mpmath.pi / (2 * x)) * mpmath.besseli(l + 0.5, x)

                for n in range(n_max):
                    def f(r, n=n, l=l, r0=r0):
                        g = sum(betas[n, k] * (r_cut - r) ** (k + 3) for k in range(n_max))
                        return r**2 * g * mpmath.exp(-eta * (r**2 + r0**2)) * i_l(2 * eta * r * r0)

                    exact = 4 * mpmath.pi * mpmath.quad(f, [0, r_cut / 2, r_cut]) / r0**l
                    assert abs(float(exact) - ours[e, l, n]) <= 1e-12 * scale, (r0, l, n)


def test_scaled_spherical_bessel_against_mpmath():
    import mpmath

    from mlmd.model.soap_basis import ScaledSphericalBesselI

    l_max = 10
    bessel = ScaledSphericalBesselI(l_max)
    xs = np.concatenate([np.logspace(-6, 0, 13), np.linspace(1.5, 60.0, 40), [bessel.x_switch]])
    x = torch.as_tensor(xs).requires_grad_(True)
    values = bessel(x)
    with mpmath.workdps(30):
        exact = np.array([[float(mpmath.exp(-v) * mpmath.sqrt(mpmath.pi / (2 * v)) * mpmath.besseli(l + 0.5, v))
                           for v in xs] for l in range(l_max + 1)])
    np.testing.assert_allclose(values.detach().numpy(), exact, rtol=1e-12, atol=0)
    # d/dx [exp(-x) i_l] = exp(-x) (i_(l+1) + l / x i_l - i_l), through autograd; the downward recurrence's
    # gradient cancels as 1/x^2 (4e-9 at x = 1e-6), harmless in SOAP where the integrand carries r_q^2
    far = xs >= 1e-3
    for l in range(l_max):
        (d,) = torch.autograd.grad(values[l].sum(), x, retain_graph=True)
        expected = exact[l + 1] + l / xs * exact[l] - exact[l]
        np.testing.assert_allclose(d.numpy()[far], expected[far], rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------------------------------- independent checks
def test_polynomial_cutoff_acsf_against_direct_sums():
    """The polynomial cutoff is not in DScribe: compare with the defining double/triple sums written out."""
    atoms = water_box(2, seed=4)
    numbers = [1, 8]
    r_cut, p = 3.8, 6
    acsf = ACSF(2, r_cut, G2, G4, cutoff="polynomial", envelope_p=p)
    out = acsf(*graph(atoms, numbers, r_cut)).numpy()

    def fc(r: float) -> float:
        x = r / r_cut
        if x >= 1:
            return 0.0
        return 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)

    # every neighbour image within r_cut, brute force over a 3x3x3 block of cells (box 6.2 Å > r_cut)
    cell = atoms.cell.array
    sp = [numbers.index(int(z)) for z in atoms.numbers]
    pair = lambda a, b: max(a, b) * (max(a, b) + 1) // 2 + min(a, b)  # noqa: E731
    n_g2, n_g4 = len(G2), len(G4)
    for i in (0, 1, 5):
        nbrs = []
        for j in range(len(atoms)):
            for s in np.ndindex(3, 3, 3):
                v = atoms.positions[j] + (np.array(s) - 1) @ cell - atoms.positions[i]
                r = np.linalg.norm(v)
                if 1e-8 < r < r_cut:
                    nbrs.append((sp[j], v, r))
        ref = np.zeros(acsf.n_features)
        for s_j, _, r in nbrs:
            for k, (eta, rs) in enumerate(G2):
                ref[s_j * n_g2 + k] += math.exp(-eta * (r - rs) ** 2) * fc(r)
        for a in range(len(nbrs)):
            for b in range(a + 1, len(nbrs)):
                (sa, va, ra), (sb, vb, rb) = nbrs[a], nbrs[b]
                rab = np.linalg.norm(va - vb)
                cos = va @ vb / (ra * rb)
                for k, (eta, zeta, lam) in enumerate(G4):
                    g = 2 ** (1 - zeta) * (1 + lam * cos) ** zeta * math.exp(-eta * (ra**2 + rb**2 + rab**2))
                    ref[2 * n_g2 + pair(sa, sb) * n_g4 + k] += g * fc(ra) * fc(rb) * fc(rab)
        assert_close_relative(out[i], ref, rtol=1e-10)


def test_solid_harmonics_addition_theorem():
    """sum_m Y_lm(a) Y_lm(b) = (2l+1)/(4 pi) P_l(a.b) for unit vectors: orthonormal real harmonics, any phase."""
    from numpy.polynomial import legendre

    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    b = rng.normal(size=(50, 3))
    ra, rb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    l_max = 6
    ya = RealSolidHarmonics(l_max)(torch.as_tensor(a)).numpy()
    yb = RealSolidHarmonics(l_max)(torch.as_tensor(b)).numpy()
    cos = np.sum(a * b, axis=1) / (ra * rb)
    for l in range(l_max + 1):
        sl = slice(l * l, (l + 1) * (l + 1))
        lhs = np.sum(ya[:, sl] * yb[:, sl], axis=1) / (ra * rb) ** l
        rhs = (2 * l + 1) / (4 * math.pi) * legendre.legval(cos, [0] * l + [1])
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-12)


def test_edge_pairs_are_all_unordered_pairs_once():
    center = torch.tensor([2, 0, 2, 1, 0, 2, 2, 0])
    first, second = edge_pairs(center, 4)
    got = sorted(tuple(sorted((int(a), int(b)))) for a, b in zip(first, second))
    want = sorted((a, b) for a in range(8) for b in range(a + 1, 8) if center[a] == center[b])
    assert got == want
    empty = edge_pairs(torch.zeros(0, dtype=torch.long), 3)
    assert empty[0].numel() == 0


def test_generated_acsf_parameters_cover_the_cutoff():
    params = acsf_parameters(5.0, n_radial=6, n_angular=3)
    rs = [p[1] for p in params["g2"]]
    assert len(rs) == 6 and rs[0] == pytest.approx(0.5) and rs[-1] < 5.0
    assert len(params["g4"]) == 12 and {p[2] for p in params["g4"]} == {1.0, -1.0}
    assert sorted({p[1] for p in params["g4"]}) == [1.0, 2.0, 4.0]


# ------------------------------------------------------------------------------------ invariance, smoothness
def random_orthogonal(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return -q if np.linalg.det(q) > 0 else q  # an improper rotation: reflection included


def descriptor_modules():
    return [
        ACSF(2, 3.5, *acsf_parameters(3.5, 6, 3).values(), cutoff="polynomial"),
        SOAP(2, 3.5, 4, 4, 0.5, weighting="poly", poly_m=2),
        SOAP(2, 3.5, 4, 4, 0.5, weighting="poly", poly_m=2, rbf="polynomial"),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["acsf", "soap", "soap-polynomial"])
def test_descriptor_invariance(which):
    desc = descriptor_modules()[which]
    rng = np.random.default_rng(7)
    atoms = water_box(2, seed=2)
    base = desc(*graph(atoms, [1, 8], 3.5)).numpy()
    q = random_orthogonal(rng)
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    moved.positions = atoms.positions @ q.T + rng.normal(size=3) * 3.0
    np.testing.assert_allclose(desc(*graph(moved, [1, 8], 3.5)).numpy(), base, rtol=1e-9, atol=1e-11)
    perm = rng.permutation(len(atoms))
    permuted = atoms[perm]
    np.testing.assert_allclose(desc(*graph(permuted, [1, 8], 3.5)).numpy(), base[perm], rtol=1e-9, atol=1e-11)
    # the atom's own image in a small periodic cell sees itself: also handled (cell smaller than the cutoff)
    small = bulk("Cu", "fcc", a=3.6) * (1, 1, 1)
    small.numbers[:] = 1
    d_small = desc(*graph(small, [1, 8], 3.5))
    assert torch.isfinite(d_small).all() and float(d_small.abs().max()) > 0


def energy_and_forces(pot: torch.nn.Module, atoms: Atoms) -> tuple[float, np.ndarray]:
    pos = torch.as_tensor(atoms.positions).clone().requires_grad_(True)
    energy = pot(*graph(atoms, pot.atomic_numbers, pot.r_cut, pos)).sum()
    (grad,) = torch.autograd.grad(energy, pos)
    return float(energy.detach()), -grad.numpy()


@pytest.mark.parametrize("kind", ["bp-acsf", "bp-soap"])
def test_bp_invariance_and_forces_against_finite_differences(kind):
    pot = make_bp(kind)
    atoms = water_box(2, seed=5)
    rng = np.random.default_rng(1)
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    e0, f0 = energy_and_forces(pot, atoms)
    assert np.abs(f0).max() > 1e-2
    q = random_orthogonal(rng)
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ q.T)
    moved.positions = atoms.positions @ q.T + 1.7
    e1, f1 = energy_and_forces(pot, moved)
    assert e1 == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f1, f0 @ q.T, atol=1e-10)
    perm = rng.permutation(len(atoms))
    e2, f2 = energy_and_forces(pot, atoms[perm])
    assert e2 == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f2, f0[perm], atol=1e-10)
    h = 1e-5
    for i in (0, 10):
        for d in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, d] += h
            minus.positions[i, d] -= h
            fd = -(energy_and_forces(pot, plus)[0] - energy_and_forces(pot, minus)[0]) / (2 * h)
            assert fd == pytest.approx(f0[i, d], abs=1e-7, rel=1e-6)


@pytest.mark.parametrize("kind", ["bp-acsf", "bp-soap"])
def test_bp_energy_smooth_at_cutoff(kind):
    """An O-H pair crossing r_cut: energy continuous and the force going to zero (C1 at least)."""
    pot = make_bp(kind)
    rc = pot.r_cut

    def dimer(r: float) -> tuple[float, np.ndarray]:
        return energy_and_forces(pot, Atoms("OH", positions=[[0, 0, 0], [r, 0, 0]]))

    e_far, f_far = dimer(rc + 1e-3)
    assert np.abs(f_far).max() == 0.0
    e_in, f_in = dimer(rc - 1e-3)
    e_mid, f_mid = dimer(rc - 0.3)
    assert abs(e_in - e_far) < 1e-6 * max(abs(e_mid - e_far), 1e-3)
    assert np.abs(f_in).max() < 1e-4 * max(np.abs(f_mid).max(), 1e-3)


# ------------------------------------------------------------------------------------ model contract, training
def test_scripted_descriptors_equal_eager():
    atoms = water_box(2, seed=6)
    g = graph(atoms, [1, 8], 3.5)
    for desc in descriptor_modules():
        scripted = torch.jit.script(desc)
        np.testing.assert_array_equal(scripted(*g).numpy(), desc(*g).numpy())


def test_bp_rebuilds_from_hparams_and_checks_settings():
    from mlmd.model.potential import potential_from_hparams

    for kind in ("bp-acsf", "bp-soap"):
        pot = make_bp(kind, seed=3)
        twin = potential_from_hparams(pot.hparams).double()
        assert type(twin) is BehlerParrinelloPotential and twin.hparams == pot.hparams
        assert pot.hparams["n_layers"] == 1
        twin.load_state_dict(pot.state_dict())
        g = graph(water_box(2, seed=0), [1, 8], pot.r_cut)
        np.testing.assert_array_equal(twin(*g).detach().numpy(), pot(*g).detach().numpy())
    with pytest.raises(ValueError, match="weighting 'poly'"):
        BehlerParrinelloPotential([1, 8], 4.0, "bp-soap", descriptor={"weighting": "none"})
    with pytest.raises(ValueError, match="unknown bp-acsf descriptor settings"):
        BehlerParrinelloPotential([1, 8], 4.0, "bp-acsf", descriptor={"n_max": 4})
    with pytest.raises(ValueError, match="zeta >= 1"):
        BehlerParrinelloPotential([1, 8], 4.0, "bp-acsf", descriptor={"g4": [[0.1, 0.5, 1.0]]})
    with pytest.raises(ValueError, match="unknown cutoff function"):
        ACSF(2, 4.0, G2, G4, cutoff="step")


def test_bp_soap_polynomial_basis_from_config():
    """model.bp.soap_rbf reaches the descriptor; the potential's forces are -dE/dR (central differences)."""
    from mlmd.config import config_from_dict
    from mlmd.model.behler_parrinello import build_bp_potential

    cfg = config_from_dict({"model": {"kind": "bp-soap", "r_cut": 3.5, "bp": {"soap_rbf": "polynomial", "n_max": 3,
                                                                           "l_max": 2, "hidden": [8]}}})
    torch.manual_seed(0)
    pot = build_bp_potential([1, 8], cfg.model).double().eval()
    assert pot.network.descriptor.rbf == "polynomial" and pot.hparams["descriptor"]["rbf"] == "polynomial"
    with torch.no_grad():
        pot.network.feature_std.uniform_(0.05, 0.2)
    atoms = water_box(2, seed=4)
    _, f = energy_and_forces(pot, atoms)
    h, fd = 1e-5, np.zeros(6)
    for k, (a, c) in enumerate([(0, 0), (1, 2), (5, 1), (9, 0), (12, 2), (20, 1)]):
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[a, c] += sign * h
            fd[k] -= sign * energy_and_forces(pot, moved)[0] / (2 * h)
        assert abs(f[a, c] - fd[k]) <= 1e-7 * max(1.0, abs(fd[k])), (a, c, f[a, c], fd[k])
    with pytest.raises(ValueError, match="unknown SOAP radial basis"):
        BehlerParrinelloPotential([1, 8], 3.5, "bp-soap", descriptor={"rbf": "spline"})


@pytest.fixture(scope="module", params=["bp-acsf", "bp-soap"])
def trained_bp(request, emt_data, tmp_path_factory) -> dict:
    """A BP model trained briefly with the trainer (`model: {kind: bp-...}`), its checkpoint and packaged file."""
    from mlmd.config import config_from_dict
    from mlmd.deploy.export import package_checkpoint
    from mlmd.model.checkpoint import load_checkpoint_model
    from mlmd.model.properties import edge_vectors
    from mlmd.train.trainer import Trainer

    kind = request.param
    out = tmp_path_factory.mktemp(kind)
    bp = {"hidden": [16], "n_radial": 6, "n_angular": 2}
    if kind == "bp-soap":
        bp = {"hidden": [16], "n_max": 4, "l_max": 3}
    cfg = config_from_dict(
        {
            "data": {"path": str(emt_data), "val_fraction": 0.2, "test_fraction": 0.1},
            "model": {"kind": kind, "r_cut": 3.2, "dtype": "float64", "bp": bp},
            "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "seed": 0, "threads": 2},
            "output_dir": str(out / "run"),
        }
    )
    trainer = Trainer(cfg, progress=False)
    b = next(iter(trainer.train_data.batches(64)))  # the whole training set
    vec = edge_vectors(b["positions"], b["cell"], b["edge_index"], b["edge_shifts"], b["batch"])
    net = trainer.model.network
    z = (net.descriptor(b["species"], b["edge_index"], vec) - net.feature_mean[b["species"]]) / net.feature_std[
        b["species"]
    ]
    trainer.train()
    model_file = out / f"{kind}.pt"
    card = package_checkpoint(out / "run" / "checkpoint_best.pt", model_file)
    model = load_checkpoint_model(out / "run" / "checkpoint_best.pt")
    return {"kind": kind, "history": trainer.history, "standardised": z, "std": net.feature_std[b["species"]],
            "file": model_file, "card": card, "model": model, "data": emt_data}


def test_trained_bp_packages_and_matches_in_ase(trained_bp):
    import ase.io
    from ase.calculators.fd import calculate_numerical_stress

    from mlmd.engines.ase import MLMDCalculator

    # inputs were standardised per element on the training set; training lowered the loss
    z, std = trained_bp["standardised"], trained_bp["std"]
    assert float(z.mean(0).abs().max()) < 1e-8
    varying = (std != 1.0).all(0)
    assert int(varying.sum()) > 0
    assert float(z[:, varying].std(0, unbiased=False).sub(1).abs().max()) < 1e-8
    losses = [row["train_loss"] for row in trained_bp["history"]]
    assert losses[-1] < losses[0]

    kind = trained_bp["kind"]
    card = trained_bp["card"]
    assert card.model_kind == kind and card.interaction_range == pytest.approx(3.2)
    model = trained_bp["model"]
    assert isinstance(model, BehlerParrinelloPotential)
    calc = MLMDCalculator(trained_bp["file"])
    for atoms in ase.io.read(trained_bp["data"], index=":3"):
        e_ref, f_ref = energy_and_forces(model, atoms)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(e_ref, abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-9)
    # stress from the packaged model against finite differences of the strain
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7)


def engine_test_atoms(path):
    import ase.io

    return ase.io.read(path, index="1").repeat((1, 2, 2))  # 32 atoms, box widths ~7 Å > 2 r_cut


@pytest.mark.openmm
def test_trained_bp_in_openmm(trained_bp):
    import openmm
    from openmm import unit

    from mlmd.engines.ase import MLMDCalculator
    from mlmd.engines.openmm import add_mlmd_forces, topology_from_atoms
    from mlmd.units import EV_TO_KJ_PER_MOL

    atoms = engine_test_atoms(trained_bp["data"])
    atoms.calc = MLMDCalculator(trained_bp["file"])
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    top, pos = topology_from_atoms(atoms)
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(mass)
    system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    add_mlmd_forces(trained_bp["file"], top, system)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    st = ctx.getState(getEnergy=True, getForces=True)
    e_mm = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    f_mm = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom) / EV_TO_KJ_PER_MOL
    assert e_mm == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(f_mm, f, atol=1e-9)


@pytest.mark.lammps
def test_trained_bp_in_lammps(trained_bp):
    from mlmd.engines import lammps
    from mlmd.engines.ase import MLMDCalculator

    atoms = engine_test_atoms(trained_bp["data"])
    atoms.calc = MLMDCalculator(trained_bp["file"])
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    for nprocs in (1, 2):
        res = lammps.compute(atoms, trained_bp["file"], nprocs=nprocs)
        assert res.energy == pytest.approx(e, abs=1e-9)
        np.testing.assert_allclose(res.forces, f, atol=1e-9)


@pytest.mark.parametrize("name", ["bp_acsf", "bp_soap"])
def test_bundled_water_bp_configs_build(name):
    from conftest import REPO
    from mlmd.config import load_config
    from mlmd.model.potential import build_potential

    cfg = load_config(REPO / "inputs" / "water" / f"{name}.yaml")
    pot = build_potential([1, 8], cfg.model, 40.0)
    assert isinstance(pot, BehlerParrinelloPotential) and pot.hparams["kind"] == cfg.model.kind
    assert pot.r_cut == cfg.model.r_cut and next(pot.parameters()).dtype == torch.float32
    expected = 2 * 16 + 3 * 16 if name == "bp_acsf" else (12 * 13 // 2) * 5
    assert pot.network.n_features == expected
