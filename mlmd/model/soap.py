"""The SOAP power spectrum (smooth overlap of atomic positions) in torch, element-resolved.

Works on the same graph as mlmd.model.acsf (species [N], edge_index [2, E] centre then neighbour, edge_vectors
[E, 3] = r_j - r_i), returns one row of features per atom, is differentiable twice and compiles with
torch.jit.script. The radial bases, the solid harmonics and the Bessel functions it expands in are in
mlmd.model.soap_basis.

Conventions (matched to DScribe 2.1.2, "gto" or "polynomial" radial basis; tests/unit/test_descriptors.py: to
1e-10 and 2e-10). Species are indices into the model's sorted list of atomic numbers (DScribe also sorts by Z).
- Neighbour density of element Z around atom i: rho_i^Z(r) = sum_{j in Z} w(r_ij) exp(-|r - r_ij|² / (2 sigma²))
  (Gaussians not normalised); the centre atom itself is part of its own element's density (weight w(0)).
- c_nlm^Z = int d³r g_nl(r) Y_lm(r^) rho^Z(r) with real orthonormal spherical harmonics and a radial basis
  g_nl of mlmd.model.soap_basis. GTO basis: the Gaussian integral is analytic, per neighbour at r_j
  pi^(3/2) (2 sigma²)^(3/2) (1 + alpha/eta)^-(l + 3/2) exp(-alpha eta r_j² / (alpha + eta)) r_j^l Y_lm(r^_j),
  eta = 1 / (2 sigma²); no Bessel functions needed. Polynomial basis: per neighbour at r_j
  4 pi Y_lm(r^_j) int_0^r_cut r² g_n(r) exp(-eta (r² + r_j²)) i_l(2 eta r r_j) dr (the angular integral of the
  Gaussian is exact), the radial integral by 100-point Gauss-Legendre quadrature on [0, r_cut] (DScribe's rule).
- Power spectrum p_nn'l^(Z Z') = pi sqrt(8 / (2l + 1)) sum_m c_nlm^Z c_n'lm^Z'. Layout: element pairs
  Z <= Z' (row-major), then l = 0..l_max, then (n, n') with n <= n' when Z = Z' and all pairs otherwise.
- weighting "none": DScribe's default; every atom closer than r_cut + sigma sqrt(-2 ln 1e-3) counts with
  weight 1 (the density is cut off hard there: energies built on it are not smooth, so models refuse it).
  weighting "poly": DScribe's w(r) = (1 + 2 (r/r_cut)³ - 3 (r/r_cut)²)^m = (1 - x)^(2m) (1 + 2x)^m for
  r <= r_cut, 0 beyond (C^(2m-1) at r_cut); neighbours only within r_cut. DScribe writes it as
  weighting={"function": "poly", "r0": r_cut, "c": 1, "m": m}.
"""

import math
from typing import List

import numpy as np
import torch
from torch import nn

from mlmd.model.soap_basis import (
    GAUSSIAN_DECAY,
    RealSolidHarmonics,
    ScaledSphericalBesselI,
    gto_basis,
    polynomial_basis_values,
)

SOAP_WEIGHTINGS = ("none", "poly")
SOAP_RBFS = ("gto", "polynomial")
POLYNOMIAL_QUADRATURE_POINTS = 100  # DScribe's Gauss-Legendre rule for the polynomial basis


class SOAP(nn.Module):
    """Element-resolved SOAP power spectrum with DScribe's GTO (rbf="gto") or polynomial (rbf="polynomial")
    radial basis: [N] atoms -> [N, n_features].

    `cutoff` is the neighbour-list radius the graph must be built with: r_cut for weighting "poly",
    r_cut + sigma sqrt(-2 ln 1e-3) for "none" (DScribe's padding).
    """

    def __init__(
        self,
        n_species: int,
        r_cut: float,
        n_max: int = 6,
        l_max: int = 4,
        sigma: float = 0.5,
        weighting: str = "poly",
        poly_m: int = 2,
        rbf: str = "gto",
    ) -> None:
        super().__init__()
        if rbf not in SOAP_RBFS:
            raise ValueError(f"unknown SOAP radial basis {rbf!r}; known: {', '.join(SOAP_RBFS)}")
        if weighting not in SOAP_WEIGHTINGS:
            raise ValueError(f"unknown SOAP weighting {weighting!r}; known: {', '.join(SOAP_WEIGHTINGS)}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if weighting == "poly" and poly_m < 1:
            raise ValueError(f"poly weighting exponent m must be >= 1, got {poly_m}")
        self.n_species = int(n_species)
        self.r_cut = float(r_cut)
        self.n_max = int(n_max)
        self.l_max = int(l_max)
        self.smooth = weighting == "poly"
        self.poly_m = float(poly_m)
        padding = 0.0 if self.smooth else sigma * math.sqrt(-2.0 * math.log(GAUSSIAN_DECAY))
        self.cutoff = self.r_cut + padding
        eta = 1.0 / (2.0 * sigma * sigma)
        self.eta = eta
        self.rbf = rbf
        dt = torch.float64  # constants kept in float64; forward casts them to the input dtype
        if rbf == "gto":
            alphas, betas = gto_basis(r_cut, n_max, l_max)
            ls = np.arange(l_max + 1)[:, None]
            # per neighbour: coef_lk exp(expo_lk r²) r^l Y_lm, coef = pi^(3/2) eta^(-3/2) (1 + alpha/eta)^-(l+3/2)
            expo = -alphas / (1.0 + alphas / eta)
            coef = math.pi**1.5 * eta**-1.5 * (1.0 + alphas / eta) ** (-(ls + 1.5))
            betas_scaled = betas * coef[:, None, :]  # [L+1, n, K]
            # the centre atom (r = 0, weight 1): only l = 0 survives, r^0 Y_00 = 1 / (2 sqrt(pi))
            self_term = (betas[0] * coef[0][None, :]).sum(1) / (2 * math.sqrt(math.pi))
            nodes = np.zeros(1)
            quad = np.zeros((n_max, 1))
        else:
            expo = np.zeros((l_max + 1, 1))
            betas_scaled = np.zeros((l_max + 1, n_max, 1))
            x, w = np.polynomial.legendre.leggauss(POLYNOMIAL_QUADRATURE_POINTS)
            nodes = 0.5 * r_cut * (x + 1.0)
            g = polynomial_basis_values(r_cut, n_max, nodes)  # g_n at the nodes [n, Q]
            quad = 4.0 * math.pi * (0.5 * r_cut * w)[None, :] * nodes[None, :] ** 2 * g  # [n, Q]
            # the centre atom: i_0(0) = 1, Y_00 = 1 / (2 sqrt(pi))
            self_term = (quad * np.exp(-eta * nodes**2)[None, :]).sum(1) / (2 * math.sqrt(math.pi))
        self.register_buffer("expo", torch.tensor(expo, dtype=dt))  # [L+1, K]
        self.register_buffer("betas_scaled", torch.tensor(betas_scaled, dtype=dt))
        self.register_buffer("self_term", torch.tensor(self_term, dtype=dt))
        # rebuilt from the settings (not in state dicts, so checkpoints from before the polynomial basis load)
        self.register_buffer("quad_nodes", torch.tensor(nodes, dtype=dt), persistent=False)  # [Q] Å
        self.register_buffer("quad_basis", torch.tensor(quad, dtype=dt), persistent=False)  # 4 pi w_q r_q² g_n(r_q)
        self.bessel = ScaledSphericalBesselI(l_max)
        self.harmonics = RealSolidHarmonics(l_max)
        self.register_buffer("l_of_lm", torch.tensor([l for l in range(l_max + 1) for _ in range(2 * l + 1)]))
        self.register_buffer("l_values", torch.arange(l_max + 1, dtype=dt), persistent=False)
        # flat indices into [L+1, S*n, S*n] in DScribe's order, with the l-dependent prefactor
        sn = self.n_species * n_max
        index: List[int] = []
        prefactor: List[float] = []
        for a in range(self.n_species):
            for b in range(a, self.n_species):
                for l in range(l_max + 1):
                    for n1 in range(n_max):
                        for n2 in range(n1 if a == b else 0, n_max):
                            index.append(l * sn * sn + (a * n_max + n1) * sn + b * n_max + n2)
                            prefactor.append(math.pi * math.sqrt(8.0 / (2 * l + 1)))
        self.register_buffer("ps_index", torch.tensor(index, dtype=torch.long))
        self.register_buffer("ps_prefactor", torch.tensor(prefactor, dtype=dt))
        self.n_features = len(index)

    def weights(self, r2: torch.Tensor) -> torch.Tensor:
        if not self.smooth:
            return torch.where(r2 < self.cutoff * self.cutoff, torch.ones_like(r2), torch.zeros_like(r2))
        x = torch.sqrt(r2) / self.r_cut
        w = torch.pow(torch.clamp(1.0 - x, min=0.0), 2.0 * self.poly_m) * torch.pow(1.0 + 2.0 * x, self.poly_m)
        return torch.where(x < 1.0, w, torch.zeros_like(w))

    def radial(self, r2: torch.Tensor) -> torch.Tensor:
        """Radial factors [E, L+1, n] of the coefficients of neighbours at squared distances r2 [E]: times
        r^l Y_lm(r^) (a real solid harmonic) and the weight, they give c_nlm."""
        dtype = r2.dtype
        if self.rbf == "gto":
            radial = torch.exp(self.expo.to(dtype).unsqueeze(0) * r2[:, None, None])  # [E, L+1, K]
            return torch.einsum("elk,lnk->eln", radial, self.betas_scaled.to(dtype))  # [E, L+1, n]
        r = torch.sqrt(r2)
        nodes = self.quad_nodes.to(dtype)
        # exp(-eta (r_q² + r²)) i_l(2 eta r_q r) = exp(-eta (r_q - r)²) exp(-x) i_l(x)
        x = (2.0 * self.eta) * r.unsqueeze(1) * nodes.unsqueeze(0)  # [E, Q]
        gauss = torch.exp(-self.eta * (nodes.unsqueeze(0) - r.unsqueeze(1)) ** 2)
        radial = self.bessel(x) * gauss.unsqueeze(0)  # [L+1, E, Q]
        g = torch.einsum("leq,nq->eln", radial, self.quad_basis.to(dtype))  # [E, L+1, n]
        return g / torch.pow(r.unsqueeze(1), self.l_values.to(dtype).unsqueeze(0)).unsqueeze(2)

    def coefficients(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Expansion coefficients c [N, S, (l_max+1)², n_max] (column l² + l + m)."""
        n = species.shape[0]
        s = self.n_species
        r2 = (edge_vectors * edge_vectors).sum(1)
        dtype = edge_vectors.dtype
        ylm = self.harmonics(edge_vectors) * self.weights(r2).unsqueeze(1)  # [E, LM]: w r^l Y_lm
        g = self.radial(r2)
        contrib = g[:, self.l_of_lm, :] * ylm.unsqueeze(2)  # [E, LM, n]
        lm = ylm.shape[1]
        c = torch.zeros(n * s, lm, self.n_max, dtype=contrib.dtype, device=contrib.device)
        c = c.index_add(0, edge_index[0] * s + species[edge_index[1]], contrib)
        own = torch.arange(n, device=species.device) * s + species
        centre = torch.zeros(n, lm, self.n_max, dtype=contrib.dtype, device=contrib.device)
        centre[:, 0, :] = self.self_term.to(dtype)
        c = c.index_add(0, own, centre)
        return c.reshape(n, s, lm, self.n_max)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        c = self.coefficients(species, edge_index, edge_vectors)
        n = c.shape[0]
        sn = self.n_species * self.n_max
        c = c.permute(0, 2, 1, 3).reshape(n, c.shape[2], sn)  # [N, LM, S*n]
        blocks: List[torch.Tensor] = []
        for l in range(self.l_max + 1):
            cl = c[:, l * l : (l + 1) * (l + 1), :]
            blocks.append(torch.einsum("nma,nmb->nab", cl, cl))
        p = torch.stack(blocks, dim=1).reshape(n, -1)
        return p[:, self.ps_index] * self.ps_prefactor.to(p.dtype)
