"""Smooth cutoff envelope and radial basis.

The envelope is the polynomial u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r/r_cut:
u(1) = u'(1) = u''(1) = 0, so energies are C2 at r_cut and forces have no jump as a neighbour leaves.
"""

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    def __init__(self, r_cut: float, p: int = 6) -> None:
        super().__init__()
        if p < 2:
            raise ValueError("envelope exponent p must be >= 2 for a C2 cutoff")
        self.r_cut = float(r_cut)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r / self.r_cut
        p = self.p
        u = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return torch.where(x < 1.0, u, torch.zeros_like(u))


class BesselBasis(nn.Module):
    """sqrt(2/r_cut) sin(n pi r / r_cut) / r, n = 1..n_basis, times the envelope; frequencies trainable."""

    def __init__(self, r_cut: float, n_basis: int = 8, p: int = 6, trainable: bool = True) -> None:
        super().__init__()
        self.r_cut = float(r_cut)
        self.prefactor = math.sqrt(2.0 / r_cut)
        freqs = torch.arange(1, n_basis + 1, dtype=torch.get_default_dtype()) * math.pi / r_cut
        self.freqs = nn.Parameter(freqs, requires_grad=trainable)
        self.envelope = PolynomialEnvelope(r_cut, p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        basis = self.prefactor * torch.sin(self.freqs * r) / r
        return basis * self.envelope(r)
