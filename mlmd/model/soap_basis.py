"""The functions SOAP (mlmd.model.soap) expands the neighbour density in: real solid harmonics, DScribe's
GTO and polynomial radial bases, and the scaled modified spherical Bessel functions of the polynomial basis.

- GTO basis ("gto", DScribe's default): g_nl(r) = sum_k beta_lnk r^l exp(-alpha_lk r²), alpha_lk such that
  r^l exp(-alpha r²) falls to 1e-3 at a_k = linspace(1, r_cut, n_max); beta_l = S_l^(-1/2) (Löwdin) with the
  overlap S_lkk' = Gamma(l + 3/2) / (2 (alpha_lk + alpha_lk')^(l + 3/2)).
- Polynomial basis ("polynomial"; Bartók et al. 2013, DScribe's conventions): g_n(r) = sum_n' beta_nn'
  (r_cut - r)^(n' + 2), n' = 1..n_max, on [0, r_cut]; beta = S^(-1/2) (Löwdin) with the overlap
  S_ij = int_0^r_cut (r_cut - r)^(i+2) (r_cut - r)^(j+2) r² dr = 2 r_cut^(7+i+j) / ((5+i+j)(6+i+j)(7+i+j)).
- exp(-x) i_l(x), i_l the modified spherical Bessel function of the first kind (the polynomial basis's
  Gaussian integral), from its power series below x_s = max(4, l_max + 2) (then downward recurrence, stable)
  and from the closed forms of i_0, i_1 with upward recurrence above (relative error < 1e-12 for l <= 10
  against mpmath).
- r^l Y_lm(r^): real orthonormal spherical harmonics times r^l, polynomials in x, y, z.
"""

import math
from typing import List

import numpy as np
import torch
from torch import nn

GAUSSIAN_DECAY = 1e-3  # DScribe: GTOs and the neighbour Gaussians decay to this at their cutoffs


class RealSolidHarmonics(nn.Module):
    """r^l Y_lm(r^) for l = 0..l_max, m = -l..l (column l² + l + m), real orthonormal Y, no Condon-Shortley phase.

    Polynomials in x, y, z (smooth everywhere, also at r = 0): Re/Im of (x + i y)^m times the homogenised
    m-th derivative of the Legendre polynomial, from its three-term recurrence.
    """

    norms: List[float]
    double_factorials: List[float]

    def __init__(self, l_max: int) -> None:
        super().__init__()
        if l_max < 0:
            raise ValueError(f"l_max must be >= 0, got {l_max}")
        self.l_max = int(l_max)
        norms: List[float] = []
        for l in range(l_max + 1):
            for m in range(-l, l + 1):
                am = abs(m)
                f = (2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am)
                norms.append(math.sqrt(f if m == 0 else 2.0 * f))
        self.norms = norms
        self.double_factorials = [float(np.prod(np.arange(2 * m - 1, 0, -2))) for m in range(l_max + 1)]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        x = v[:, 0]
        y = v[:, 1]
        z = v[:, 2]
        r2 = x * x + y * y + z * z
        ones = torch.ones_like(x)
        cos_m: List[torch.Tensor] = [ones]
        sin_m: List[torch.Tensor] = [torch.zeros_like(x)]
        for m in range(1, self.l_max + 1):
            cos_m.append(x * cos_m[m - 1] - y * sin_m[m - 1])
            sin_m.append(x * sin_m[m - 1] + y * cos_m[m - 1])
        size = (self.l_max + 1) * (self.l_max + 1)
        out: List[torch.Tensor] = [ones for _ in range(size)]
        for m in range(self.l_max + 1):
            q_prev = ones * 0.0
            q = ones * self.double_factorials[m]
            for l in range(m, self.l_max + 1):
                if l > m:
                    q_next = ((2 * l - 1) * z * q - (l + m - 1) * r2 * q_prev) / (l - m)
                    q_prev = q
                    q = q_next
                c = l * l + l
                if m == 0:
                    out[c] = self.norms[c] * q
                else:
                    out[c + m] = self.norms[c + m] * q * cos_m[m]
                    out[c - m] = self.norms[c - m] * q * sin_m[m]
        return torch.stack(out, dim=1)


def gto_basis(r_cut: float, n_max: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """DScribe's GTO radial basis: alphas [l_max+1, n_max] (1/Å²) and Löwdin betas [l_max+1, n_max, n_max]."""
    if r_cut <= 1.0:
        raise ValueError(f"the GTO radial basis needs r_cut > 1 Å, got {r_cut}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    a = np.linspace(1.0, r_cut, n_max)
    alphas = np.zeros((l_max + 1, n_max))
    betas = np.zeros((l_max + 1, n_max, n_max))
    for l in range(l_max + 1):
        al = -np.log(GAUSSIAN_DECAY / np.power(a, l)) / a**2
        s = 0.5 * math.gamma(l + 1.5) * (al[:, None] + al[None, :]) ** (-l - 1.5)
        w, u = np.linalg.eigh(s)
        if w.min() <= 1e-14 * w.max():
            raise ValueError(
                f"GTO radial basis with n_max={n_max}, r_cut={r_cut} is numerically linearly dependent at l={l}: "
                "lower n_max or raise r_cut"
            )
        alphas[l] = al
        betas[l] = (u / np.sqrt(w)) @ u.T
    return alphas, betas


def _polynomial_basis_mp(r_cut: float, n_max: int):
    """(betas, S) of the polynomial basis as mpmath matrices at 40 digits: S is ill-conditioned (cond ~1e9 at
    n_max = 5), so S^(-1/2) in float64 would carry errors of ~1e-8 (mpmath comes with torch, through sympy)."""
    import mpmath

    with mpmath.workdps(40):
        rc = mpmath.mpf(r_cut)
        s = mpmath.matrix(n_max, n_max)
        for i in range(1, n_max + 1):
            for j in range(1, n_max + 1):
                k = i + j
                s[i - 1, j - 1] = 2 * rc ** (7 + k) / ((5 + k) * (6 + k) * (7 + k))
        w, u = mpmath.eigsy(s)
        if min(w) <= mpmath.mpf(10) ** -25 * max(w):
            raise ValueError(f"polynomial radial basis with n_max={n_max} is linearly dependent: lower n_max")
        betas = u * mpmath.diag([1 / mpmath.sqrt(x) for x in w]) * u.T
    return betas, s


def polynomial_basis(r_cut: float, n_max: int) -> np.ndarray:
    """DScribe's polynomial radial basis: Löwdin betas [n_max, n_max] of (r_cut - r)^(n' + 2), n' = 1..n_max."""
    if r_cut <= 0:
        raise ValueError(f"r_cut must be > 0, got {r_cut}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    betas, _ = _polynomial_basis_mp(r_cut, n_max)
    return np.array(betas.tolist(), dtype=np.float64)


def polynomial_basis_values(r_cut: float, n_max: int, r: np.ndarray) -> np.ndarray:
    """g_n(r) [n_max, len(r)] of the polynomial basis, summed at 40 digits (the terms cancel strongly)."""
    import mpmath

    if r_cut <= 0:
        raise ValueError(f"r_cut must be > 0, got {r_cut}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    betas, _ = _polynomial_basis_mp(r_cut, n_max)
    out = np.zeros((n_max, len(r)))
    with mpmath.workdps(40):
        rc = mpmath.mpf(r_cut)
        for q, rq in enumerate(r):
            f = [(rc - mpmath.mpf(float(rq))) ** (k + 2) for k in range(1, n_max + 1)]
            for n in range(n_max):
                out[n, q] = float(mpmath.fsum(betas[n, k] * f[k] for k in range(n_max)))
    return out


def _series_terms(x_max: float) -> int:
    """Terms of the power series of i_0 (the slowest) that reach 1e-18 relative for x <= x_max."""
    k, term, total = 0, 1.0, 1.0
    while term > 1e-18 * total:
        k += 1
        term *= (x_max * x_max / 2.0) / (k * (2 * k + 1))
        total += term
    return k + 2


class ScaledSphericalBesselI(nn.Module):
    """exp(-x) i_l(x), l = 0..l_max, x > 0 (modified spherical Bessel functions of the first kind):
    [..] -> [l_max+1, ..].

    Power series below x_s = max(4, l_max + 2) for l_max and l_max - 1, then downward recurrence (stable for
    i_l); above x_s the closed forms of i_0 and i_1 and upward recurrence. Differentiable in x to any order.
    """

    double_factorials: List[float]

    def __init__(self, l_max: int) -> None:
        super().__init__()
        self.l_max = int(l_max)
        self.x_switch = max(4.0, l_max + 2.0)
        self.n_terms = _series_terms(self.x_switch)
        self.double_factorials = [float(np.prod(np.arange(2 * l + 1, 0, -2))) for l in range(l_max + 1)]

    def _series(self, l: int, x: torch.Tensor, half_x2: torch.Tensor) -> torch.Tensor:
        term = torch.ones_like(x)
        total = torch.ones_like(x)
        for k in range(1, self.n_terms):
            term = term * half_x2 / float(k * (2 * l + 2 * k + 1))
            total = total + term
        return total * torch.pow(x, l) / self.double_factorials[l]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lmax = self.l_max
        shape = x.shape
        flat = x.reshape(-1)
        high = torch.clamp(flat, min=self.x_switch)
        # x >= x_s: closed forms, upward recurrence i_(l+1) = i_(l-1) - (2l + 1) / x i_l
        e2 = torch.exp(-2.0 * high)
        up: List[torch.Tensor] = [(1.0 - e2) / (2.0 * high)]
        if lmax >= 1:
            up.append((0.5 * (1.0 + e2) - up[0]) / high)
        for l in range(1, lmax):
            up.append(up[l - 1] - (2 * l + 1) / high * up[l])
        # x < x_s (only those entries): series for the two highest l, downward recurrence
        # i_(l-1) = i_(l+1) + (2l + 1) / x i_l, then written over the upward values
        below = torch.nonzero(flat < self.x_switch).squeeze(1)
        low = flat.index_select(0, below)
        half_x2 = 0.5 * low * low
        down: List[torch.Tensor] = [low for _ in range(lmax + 1)]
        down[lmax] = self._series(lmax, low, half_x2)
        if lmax >= 1:
            down[lmax - 1] = self._series(lmax - 1, low, half_x2)
        for l in range(lmax - 1, 0, -1):
            down[l - 1] = down[l + 1] + (2 * l + 1) / low * down[l]
        scale = torch.exp(-low)
        out: List[torch.Tensor] = []
        for l in range(lmax + 1):
            out.append(up[l].scatter(0, below, down[l] * scale).reshape(shape))
        return torch.stack(out, dim=0)
