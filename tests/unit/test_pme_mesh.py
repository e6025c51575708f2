"""mlmd.model.pme_mesh against torch-pme's MeshInterpolator (Lagrange, even orders): the same density on the mesh,
the same interpolated values, and the same gradients in the positions."""

import pytest
import torch
import torchpme

from mlmd.model import pme_mesh


def _setup(order: int):
    gen = torch.Generator().manual_seed(order)
    cell = torch.tensor([[9.0, 0.0, 0.0], [2.5, 8.0, 0.0], [-1.5, 1.0, 10.0]], dtype=torch.float64)
    frac = torch.rand(40, 3, generator=gen, dtype=torch.float64) * 1.4 - 0.2  # some atoms outside the cell
    positions = (frac @ cell).requires_grad_(True)
    charges = torch.randn(40, generator=gen, dtype=torch.float64)
    sizes = [15, 16, 18]
    ref = torchpme.lib.MeshInterpolator(cell, torch.tensor(sizes), interpolation_nodes=order, method="Lagrange")
    return cell, positions, charges, sizes, ref


@pytest.mark.parametrize("order", [4, 6])
def test_density_and_interpolation_match_torchpme(order):
    cell, positions, charges, sizes, ref = _setup(order)
    ref.compute_weights(positions)
    rho_ref = ref.points_to_mesh(charges.unsqueeze(1))[0]
    weights, flat = pme_mesh.mesh_weights(positions, torch.linalg.inv(cell), sizes,
                                          pme_mesh.lagrange_coefficients(order))
    rho = pme_mesh.spread(charges, weights, flat, sizes)
    assert torch.allclose(rho, rho_ref, rtol=0, atol=1e-13)
    assert abs(float(rho.detach().sum() - charges.sum())) < 1e-12  # Lagrange weights sum to one

    field = torch.randn(sizes, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    phi_ref = ref.mesh_to_points(field.unsqueeze(0))[:, 0]
    phi = pme_mesh.gather(field, weights, flat)
    assert torch.allclose(phi, phi_ref, rtol=0, atol=1e-12)

    g_ref = torch.autograd.grad((phi_ref * charges).sum() + (rho_ref * field).sum(), positions)[0]
    g = torch.autograd.grad((phi * charges).sum() + (rho * field).sum(), positions)[0]
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-11)


def test_lagrange_weights_interpolate_polynomials_exactly():
    # p nodes reproduce every polynomial of degree < p: sum_k w_k(x) t_k^m = x^m
    order = 6
    c = pme_mesh.lagrange_coefficients(order)
    x = torch.linspace(-0.5, 0.5, 11, dtype=torch.float64)
    w = torch.stack([x.pow(k) for k in range(order)], dim=-1) @ c.T
    nodes = torch.arange(order, dtype=torch.float64) - order / 2 + 0.5
    for m in range(order):
        assert torch.allclose(w @ nodes.pow(m), x.pow(m), atol=1e-13)
    with pytest.raises(ValueError, match="even number"):
        pme_mesh.lagrange_coefficients(5)


@pytest.mark.parametrize("order", [4, 6])
def test_gather_with_gradient_is_the_interpolation_and_its_derivative(order):
    cell, positions, charges, sizes, _ = _setup(order)
    coefficients = pme_mesh.bspline_coefficients(order)
    u = pme_mesh.mesh_coordinates(positions.detach(), torch.linalg.inv(cell), sizes).requires_grad_(True)
    w, dw, base = pme_mesh.axis_weights(u, coefficients)
    flat = pme_mesh.flat_indices(base, sizes, order)
    field = torch.randn(sizes, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = pme_mesh.gather(field, pme_mesh.outer_weights(w), flat)  # autograd through the p^3 weights
    values, gradient = pme_mesh.gather_with_gradient(field, w.detach(), dw.detach(), flat)
    assert torch.allclose(values, reference, rtol=0, atol=1e-13)
    expected = torch.autograd.grad((reference * charges).sum(), u)[0]
    assert torch.allclose(gradient * charges[:, None], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("assignment", ["lagrange", "bspline"])
def test_pme_charge_derivatives_for_training(assignment):
    """The PME term puts the positions' gradient back by hand (mesh weights at detached positions): dE/dq and
    the mixed derivative d(F . v)/dq that force-loss training of predicted charges needs, against central
    finite differences in the charges (a background keeps the perturbed cells neutral); forces also against finite
    differences in the positions."""
    from mlmd import ewald_params as ep
    from mlmd.model.electrostatics import Electrostatics

    cell, positions, charges, _, _ = _setup(4)
    charges = charges - charges.mean()
    params = ep.choose_parameters(1e-5, "pme", r_cut=4.0, pme_assignment=assignment, neutralizing_background=True)
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
