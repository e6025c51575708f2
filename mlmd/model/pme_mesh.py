"""Charge assignment and potential interpolation of PME on a mesh, in few tensor operations.

The same scheme as torch-pme 0.5.0's ``MeshInterpolator`` with ``method="Lagrange"`` and an even number p of
nodes (the one ``mlmd.model.electrostatics`` uses): an atom at fractional mesh coordinate u along a lattice
vector (u = n * s, s its fractional coordinate) is spread onto the p nodes floor(u) - p/2 + 1 ... floor(u) + p/2,
with the Lagrange weights of those nodes evaluated at u. torch-pme builds the p^3 weights and indices of each
atom by indexing with three index tensors and assigns them with ``index_put_`` on a 3-index mesh; here the
weights are p polynomial evaluations per axis (one matmul), the p^3 products and flat mesh indices come from
broadcasting, assignment is one ``index_add`` on the flattened mesh, and interpolation one gather of the p^3 mesh
values contracted axis by axis with the weights and their derivatives (``gather_with_gradient``: the potential and
its gradient, which mlmd.model.electrostatics hands to autograd).
Measured at 3,072 water atoms (mesh 75^3, p = 6, one thread, forces by autograd): see benchmarks/SPEEDUPS.md.
"""

import math

import numpy as np
import torch


def lagrange_coefficients(order: int) -> torch.Tensor:
    """[order, order] float64: row k holds the monomial coefficients (x^0 ... x^(p-1)) of the Lagrange weight of
    node k, for x = u - floor(u) - 1/2 in [-1/2, 1/2) and nodes at x-coordinates k - p/2 + 1/2 (k = 0..p-1)."""
    if order < 2 or order % 2:
        raise ValueError("the mesh interpolation needs an even number of nodes, got " + str(order))
    nodes = np.arange(order) - order / 2 + 0.5
    out = np.zeros((order, order))
    for k in range(order):
        others = np.delete(nodes, k)
        poly = np.poly(others) / np.prod(nodes[k] - others)  # highest power first
        out[k] = poly[::-1]
    return torch.tensor(out, dtype=torch.float64)


def axis_weights(u: torch.Tensor, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights [N, 3, p], their derivatives in u [N, 3, p], floor(u) [N, 3]) of the p nodes along each axis
    at fractional mesh coordinates ``u`` [N, 3]; differentiable in u where u is."""
    p = coefficients.shape[0]
    base = torch.floor(u.detach())
    x = u - base - 0.5
    powers = torch.stack([x.pow(k) for k in range(p)], dim=-1)  # [N, 3, p]
    slopes = torch.stack([k * x.pow(k - 1) for k in range(1, p)], dim=-1)
    return powers @ coefficients.T, slopes @ coefficients[:, 1:].T, base


def outer_weights(w: torch.Tensor) -> torch.Tensor:
    """[N, p^3]: the products w_x w_y w_z of the per-axis weights [N, 3, p]."""
    p = w.shape[2]
    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    return (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(-1, p * p * p)


def flat_indices(base: torch.Tensor, sizes: list[int], p: int) -> torch.Tensor:
    """[N, p^3] indices into the flattened mesh of the p^3 nodes around each atom (``base``: floor(u))."""
    offsets = torch.arange(p, device=base.device, dtype=torch.long) - (p // 2 - 1)
    idx = base.to(torch.long).unsqueeze(2) + offsets  # [N, 3, p]
    sizes_t = torch.tensor(sizes, dtype=torch.long, device=base.device)
    idx = torch.remainder(idx, sizes_t.view(1, 3, 1))
    ix = idx[:, 0] * (sizes[1] * sizes[2])
    iy = idx[:, 1] * sizes[2]
    iz = idx[:, 2]
    return (ix[:, :, None, None] + iy[:, None, :, None] + iz[:, None, None, :]).reshape(-1, p * p * p)


def mesh_coordinates(positions: torch.Tensor, inverse_cell: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """[N, 3] fractional mesh coordinates u = n_i s_i of each atom (s: fractional coordinates)."""
    n = torch.tensor(sizes, dtype=positions.dtype, device=positions.device)
    return (positions @ inverse_cell) * n


def spread(charges: torch.Tensor, weights: torch.Tensor, flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Charge density on the mesh [nx, ny, nz] from charges [N] (one index_add on the flattened mesh)."""
    values = (charges.unsqueeze(1) * weights).reshape(-1)
    mesh = torch.zeros(sizes[0] * sizes[1] * sizes[2], dtype=weights.dtype, device=weights.device)
    return mesh.index_add(0, flat.reshape(-1), values).reshape(sizes[0], sizes[1], sizes[2])


def gather_with_gradient(
    mesh: torch.Tensor, w: torch.Tensor, dw: torch.Tensor, flat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N], gradients in the mesh coordinates u [N, 3]) of a mesh function [nx, ny, nz] interpolated at
    the atoms, from the per-axis weights and their derivatives (``axis_weights``): the p^3 mesh values around
    each atom contracted one axis at a time, so that no p^3 product of weights is formed or differentiated."""
    n, p = w.shape[0], w.shape[2]
    m = mesh.reshape(-1).index_select(0, flat.reshape(-1)).view(n, p * p, p)
    a = torch.bmm(m, torch.stack([w[:, 2], dw[:, 2]], dim=2)).view(n, p, p, 2)  # sum over z: w_z, dw_z
    yz = (a * w[:, 1, None, :, None]).sum(2)  # [N, p(x), 2]: sum over y with w_y
    dy = (a[:, :, :, 0] * dw[:, 1, None, :]).sum(2)  # [N, p(x)]: dw_y w_z
    wx, dwx = w[:, 0], dw[:, 0]
    values = (yz[:, :, 0] * wx).sum(1)
    gradient = torch.stack([(yz[:, :, 0] * dwx).sum(1), (dy * wx).sum(1), (yz[:, :, 1] * wx).sum(1)], dim=1)
    return values, gradient



def _bspline(order: int, t: np.ndarray) -> np.ndarray:
    """The cardinal B-spline M_p(t) (support [0, p]), by M_k(t) = [t M_(k-1)(t) + (k - t) M_(k-1)(t - 1)] / (k - 1)."""
    if order == 1:
        return ((t >= 0) & (t < 1)).astype(float)
    return (t * _bspline(order - 1, t) + (order - t) * _bspline(order - 1, t - 1)) / (order - 1)


def bspline_coefficients(order: int) -> torch.Tensor:
    """As ``lagrange_coefficients`` for the B-spline of smooth PME (Essmann et al., J. Chem. Phys. 103, 8577 (1995))
    centred on the atom: node k at x-coordinate t_k gets M_p(x - t_k + p/2), one polynomial piece per node."""
    if order < 2 or order % 2:
        raise ValueError("the mesh interpolation needs an even number of nodes, got " + str(order))
    nodes = np.arange(order) - order / 2 + 0.5
    x = np.linspace(-0.5, 0.5, 2 * order + 1)[1:-1]  # inside one piece: exact fit of a degree p-1 polynomial
    out = np.zeros((order, order))
    vander = np.vander(x, order, increasing=True)
    for k in range(order):
        out[k] = np.linalg.lstsq(vander, _bspline(order, x - nodes[k] + order / 2), rcond=None)[0]
    return torch.tensor(out, dtype=torch.float64)


def bspline_node_values(order: int) -> torch.Tensor:
    """[p - 1] float64: the centred B-spline at the integers -(p/2 - 1) .. p/2 - 1 (the ones it is nonzero at)."""
    return torch.tensor(_bspline(order, np.arange(1, order, dtype=float)), dtype=torch.float64)


def bspline_moduli(size: int, values: torch.Tensor, n_out: int) -> torch.Tensor:
    """|b(m)|^2 of smooth PME along one axis of ``size`` points, for FFT indices m = 0 .. n_out - 1: the squared
    discrete Fourier transform of the centred B-spline at the integers (``bspline_node_values``; real and even,
    > 0 for even orders)."""
    half = (values.shape[0] + 1) // 2
    j = torch.arange(-half + 1, half, dtype=values.dtype, device=values.device)
    m = torch.arange(n_out, dtype=values.dtype, device=values.device)
    b = (values.unsqueeze(0) * torch.cos((2.0 * math.pi / size) * m.unsqueeze(1) * j.unsqueeze(0))).sum(1)
    return b * b
