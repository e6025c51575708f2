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
    u = pme_mesh.mesh_coordinates(positions, torch.linalg.inv(cell), sizes)
    w, dw, base = pme_mesh.axis_weights(u, pme_mesh.lagrange_coefficients(order))
    flat = pme_mesh.flat_indices(base, sizes, order)
    rho = pme_mesh.spread(charges, pme_mesh.outer_weights(w), flat, sizes)
    assert torch.allclose(rho, rho_ref, rtol=0, atol=1e-13)
    assert abs(float(rho.detach().sum() - charges.sum())) < 1e-12  # Lagrange weights sum to one

    field = torch.randn(sizes, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    phi_ref = ref.mesh_to_points(field.unsqueeze(0))[:, 0]
    phi, grad_u = pme_mesh.gather_with_gradient(field, w.detach(), dw.detach(), flat)
    assert torch.allclose(phi, phi_ref, rtol=0, atol=1e-12)

    # the interpolation's gradient chained through u(positions), and the density's through its weights
    g_ref = torch.autograd.grad((phi_ref * charges).sum() + (rho_ref * field).sum(), positions)[0]
    g = torch.autograd.grad((charges[:, None] * grad_u * u).sum() + (rho * field).sum(), positions)[0]
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
    # interpolation with autograd through the p^3 weights
    around = field.reshape(-1).index_select(0, flat.reshape(-1)).view(flat.shape)
    reference = (around * pme_mesh.outer_weights(w)).sum(1)
    values, gradient = pme_mesh.gather_with_gradient(field, w.detach(), dw.detach(), flat)
    assert torch.allclose(values, reference, rtol=0, atol=1e-13)
    expected = torch.autograd.grad((reference * charges).sum(), u)[0]
    assert torch.allclose(gradient * charges[:, None], expected, rtol=0, atol=1e-12)
