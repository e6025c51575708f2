"""Hand-built local descriptors in torch: atom-centred symmetry functions (ACSF) and SOAP.

Both work on the graph every mlmd model sees, (species [N], edge_index [2, E] with row 0 the centre i and
row 1 the neighbour j of a full neighbour list, edge_vectors [E, 3] = r_j - r_i), return one row of
features per atom, are differentiable (forces by autograd through them, twice for training on forces) and
compile with torch.jit.script. Angular terms need pairs of edges that share a centre; `edge_pairs` builds
them from edge_index inside forward.

Conventions (matched to DScribe 2.1.2; tests/unit/test_descriptors.py: ACSF to 1e-6, SOAP to 1e-10 and 2e-10)
--------------------------------------------------------------------------------------------------------
Species are indices into the model's sorted list of atomic numbers (DScribe also sorts by Z).

ACSF (Behler), with f_c the cutoff function and sums over neighbours within r_cut:
- G2_i = sum_j exp(-eta (r_ij - R_s)^2) f_c(r_ij), one block per neighbour element (eta in 1/Å², R_s in Å).
- G4_i = 2^(1-zeta) sum_{j<k} (1 + lambda cos(theta_ijk))^zeta exp(-eta (r_ij² + r_ik² + r_jk²))
  f_c(r_ij) f_c(r_ik) f_c(r_jk): each unordered pair of distinct neighbours once, r_jk also cut off, no
  radial shift; one block per unordered element pair (Z_j, Z_k).
- cutoff "cosine": f_c = (cos(pi r / r_cut) + 1) / 2 (DScribe's; C1 at r_cut). cutoff "polynomial":
  the C2 envelope of mlmd.model.radial.PolynomialEnvelope, 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1)
  - p(p+1)/2 x^(p+2) with x = r / r_cut (not in DScribe).
- Layout of one row: [G2 of element 0 | G2 of element 1 | ...] then G4 blocks in DScribe's pair order
  (a, b) with a >= b: index a(a+1)/2 + b, i.e. (0,0), (1,0), (1,1), (2,0), ... Within a block, the
  parameter sets in the order given. DScribe also writes G1 = sum_j f_c(r_ij) first in every element
  block; here G1 is simply the G2 with eta = 0 (include it in g2_params if wanted).

SOAP (DScribe's "gto" radial basis, or its "polynomial" one with ``rbf="polynomial"``):
- Neighbour density of element Z around atom i: rho_i^Z(r) = sum_{j in Z} w(r_ij) exp(-|r - r_ij|² / (2 sigma²))
  (Gaussians not normalised); the centre atom itself is part of its own element's density (weight w(0)).
- Radial basis g_nl(r) = sum_k beta_lnk r^l exp(-alpha_lk r²): alpha_lk such that r^l exp(-alpha r²) falls
  to 1e-3 at a_k = linspace(1, r_cut, n_max); beta_l = S_l^(-1/2) (Löwdin) with the overlap
  S_lkk' = Gamma(l + 3/2) / (2 (alpha_lk + alpha_lk')^(l + 3/2)).
- c_nlm^Z = int d³r g_nl(r) Y_lm(r^) rho^Z(r) with real orthonormal spherical harmonics; the Gaussian
  integral is analytic: per neighbour at r_j it is pi^(3/2) (2 sigma²)^(3/2) (1 + alpha/eta)^-(l + 3/2)
  exp(-alpha eta r_j² / (alpha + eta)) r_j^l Y_lm(r^_j), eta = 1 / (2 sigma²); no Bessel functions needed.
- Polynomial basis (rbf="polynomial"; Bartók et al. 2013, DScribe's conventions): g_n(r) = sum_n' beta_nn'
  (r_cut - r)^(n' + 2), n' = 1..n_max, on [0, r_cut]; beta = S^(-1/2) (Löwdin) with the overlap
  S_ij = int_0^r_cut (r_cut - r)^(i+2) (r_cut - r)^(j+2) r² dr = 2 r_cut^(7+i+j) / ((5+i+j)(6+i+j)(7+i+j)).
  Per neighbour at r_j: 4 pi Y_lm(r^_j) int_0^r_cut r² g_n(r) exp(-eta (r² + r_j²)) i_l(2 eta r r_j) dr with i_l the
  modified spherical Bessel function (the angular integral of the Gaussian is exact), the radial integral by
  100-point Gauss-Legendre quadrature on [0, r_cut] (DScribe's rule); exp(-x) i_l(x) from its power series
  below x_s = max(4, l_max + 2) (then downward recurrence, stable) and from the closed forms of i_0, i_1 with
  upward recurrence above (relative error < 1e-12 for l <= 10 against mpmath).
- Power spectrum p_nn'l^(Z Z') = pi sqrt(8 / (2l + 1)) sum_m c_nlm^Z c_n'lm^Z'. Layout: element pairs
  Z <= Z' (row-major), then l = 0..l_max, then (n, n') with n <= n' when Z = Z' and all pairs otherwise.
- weighting "none": DScribe's default; every atom closer than r_cut + sigma sqrt(-2 ln 1e-3) counts with
  weight 1 (the density is cut off hard there: energies built on it are not smooth, so models refuse it).
  weighting "poly": DScribe's w(r) = (1 + 2 (r/r_cut)³ - 3 (r/r_cut)²)^m = (1 - x)^(2m) (1 + 2x)^m for
  r <= r_cut, 0 beyond (C^(2m-1) at r_cut); neighbours only within r_cut. DScribe writes it as
  weighting={"function": "poly", "r0": r_cut, "c": 1, "m": m}.
"""

import math
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from mlmd.model.radial import PolynomialEnvelope

CUTOFF_FUNCTIONS = ("cosine", "polynomial")
SOAP_WEIGHTINGS = ("none", "poly")
SOAP_RBFS = ("gto", "polynomial")
POLYNOMIAL_QUADRATURE_POINTS = 100  # DScribe's Gauss-Legendre rule for the polynomial basis
GAUSSIAN_DECAY = 1e-3  # DScribe: GTOs and the neighbour Gaussians decay to this at their cutoffs


def pair_table(n_species: int) -> torch.Tensor:
    """[S, S] index of the unordered element pair (a, b): max(a,b)(max(a,b)+1)/2 + min(a,b) (DScribe's order)."""
    t = torch.zeros(n_species, n_species, dtype=torch.long)
    for a in range(n_species):
        for b in range(n_species):
            hi, lo = max(a, b), min(a, b)
            t[a, b] = hi * (hi + 1) // 2 + lo
    return t


def edge_pairs(center: torch.Tensor, n_nodes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All unordered pairs of distinct edges that share a centre atom, each once: (first [T], second [T])."""
    n_edges = center.shape[0]
    sorted_center, order = torch.sort(center, stable=True)
    counts = torch.bincount(sorted_center, minlength=n_nodes)
    start = torch.cumsum(counts, 0) - counts
    arange_e = torch.arange(n_edges, device=center.device)
    pos_in_block = arange_e - start[sorted_center]
    n_after = counts[sorted_center] - 1 - pos_in_block
    first = torch.repeat_interleave(arange_e, n_after)
    run_start = torch.cumsum(n_after, 0) - n_after
    local = torch.arange(first.shape[0], device=center.device) - torch.repeat_interleave(run_start, n_after)
    second = first + 1 + local
    return order[first], order[second]


class CosineCutoff(nn.Module):
    def __init__(self, r_cut: float) -> None:
        super().__init__()
        self.r_cut = float(r_cut)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        fc = 0.5 * (torch.cos(r * (math.pi / self.r_cut)) + 1.0)
        return torch.where(r < self.r_cut, fc, torch.zeros_like(fc))


def make_cutoff(kind: str, r_cut: float, envelope_p: int = 6) -> nn.Module:
    if kind == "cosine":
        return CosineCutoff(r_cut)
    if kind == "polynomial":
        return PolynomialEnvelope(r_cut, envelope_p)
    raise ValueError(f"unknown cutoff function {kind!r}; known: {', '.join(CUTOFF_FUNCTIONS)}")


def acsf_parameters(r_cut: float, n_radial: int = 16, n_angular: int = 4) -> dict[str, list[list[float]]]:
    """Parameter sets generated from the cutoff and a size.

    G2: n_radial Gaussians shifted to R_s = 0.5 + k d (k = 0..n_radial-1, d = (r_cut - 0.5) / n_radial), each
    of width d (eta = 1 / (2 d²)), so neighbouring Gaussians overlap and together cover [0.5 Å, r_cut).
    G4: zeta = 1, 2, 4, ... (n_angular values), each with lambda = +1 and -1 and two widths eta = 0.5 / r_cut²
    (wide: the whole sphere) and 3 / r_cut² (local): 4 n_angular functions per element pair.
    """
    if r_cut <= 0.5:
        raise ValueError(f"r_cut must exceed 0.5 Å to generate ACSF parameters, got {r_cut}")
    if n_radial < 1 or n_angular < 0:
        raise ValueError(f"need n_radial >= 1 and n_angular >= 0, got {n_radial}, {n_angular}")
    d = (r_cut - 0.5) / n_radial
    g2 = [[1.0 / (2.0 * d * d), 0.5 + k * d] for k in range(n_radial)]
    g4 = []
    for k in range(n_angular):
        zeta = float(2**k)
        for eta in (0.5 / r_cut**2, 3.0 / r_cut**2):
            for lam in (1.0, -1.0):
                g4.append([eta, zeta, lam])
    return {"g2": g2, "g4": g4}


def _check_acsf_params(g2_params: list[list[float]], g4_params: list[list[float]]) -> None:
    for p in g2_params:
        if len(p) != 2 or p[0] < 0:
            raise ValueError(f"each G2 parameter set is [eta >= 0, R_s]; got {p}")
    for p in g4_params:
        if len(p) != 3 or p[0] < 0 or p[1] < 1 or p[2] not in (1, -1):
            raise ValueError(f"each G4 parameter set is [eta >= 0, zeta >= 1, lambda = +1 or -1]; got {p}")
    if not g2_params and not g4_params:
        raise ValueError("ACSF needs at least one G2 or G4 parameter set")


class ACSF(nn.Module):
    """Element-resolved radial G2 and angular G4 symmetry functions: [N] atoms -> [N, n_features]."""

    g4_zeta: List[float]
    g4_lambda: List[float]
    g4_etas: List[float]
    g4_angular_norm: List[float]

    def __init__(
        self,
        n_species: int,
        r_cut: float,
        g2_params: List[List[float]],
        g4_params: List[List[float]],
        cutoff: str = "polynomial",
        envelope_p: int = 6,
    ) -> None:
        super().__init__()
        _check_acsf_params(g2_params, g4_params)
        self.n_species = int(n_species)
        self.n_pairs = self.n_species * (self.n_species + 1) // 2
        self.r_cut = float(r_cut)
        self.cutoff = make_cutoff(cutoff, r_cut, envelope_p)
        self.n_g2 = len(g2_params)
        self.n_g4 = len(g4_params)
        g2 = torch.tensor(g2_params, dtype=torch.float64).reshape(-1, 2)
        dt = torch.float64  # constants kept in float64; forward casts them to the input dtype
        self.register_buffer("g2_eta", g2[:, 0].to(dt))
        self.register_buffer("g2_rs", g2[:, 1].to(dt))
        # G4 factorises into an angular part per distinct (zeta, lambda), 2^(1-zeta) (1 + lambda cos)^zeta, and
        # a radial part per distinct eta: each is computed once per triplet, then combined per parameter set
        angular = sorted({(float(p[1]), float(p[2])) for p in g4_params})
        etas = sorted({float(p[0]) for p in g4_params})
        self.g4_zeta = [a[0] for a in angular]
        self.g4_lambda = [a[1] for a in angular]
        self.g4_angular_norm = [2.0 ** (1.0 - a[0]) for a in angular]
        self.g4_etas = etas
        # column of each parameter set in the (eta x angular) products, selected after the sum over triplets
        combo = [etas.index(float(p[0])) * len(angular) + angular.index((float(p[1]), float(p[2]))) for p in g4_params]
        self.register_buffer("g4_combo_index", torch.tensor(combo, dtype=torch.long))
        self.n_g4_combos = len(angular) * len(etas)
        self.register_buffer("pair_index", pair_table(self.n_species))
        self.n_features = self.n_species * self.n_g2 + self.n_pairs * self.n_g4

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        n = species.shape[0]
        center = edge_index[0]
        neighbor_species = species[edge_index[1]]
        r = torch.linalg.norm(edge_vectors, dim=1)
        fc = self.cutoff(r)
        parts: List[torch.Tensor] = []
        if self.n_g2 > 0:
            eta = self.g2_eta.to(r.dtype)
            g2 = torch.exp(-eta * (r.unsqueeze(1) - self.g2_rs.to(r.dtype)) ** 2) * fc.unsqueeze(1)
            out2 = torch.zeros(n * self.n_species, self.n_g2, dtype=g2.dtype, device=g2.device)
            out2 = out2.index_add(0, center * self.n_species + neighbor_species, g2)
            parts.append(out2.reshape(n, self.n_species * self.n_g2))
        if self.n_g4 > 0:
            e1, e2 = edge_pairs(center, n)
            fixed = edge_vectors.detach()
            r3_all = torch.linalg.norm(fixed.index_select(0, e2) - fixed.index_select(0, e1), dim=1)
            inside = torch.nonzero(r3_all < self.r_cut).squeeze(1)  # f_c(r_jk) = 0 beyond: drop those triplets
            e1 = e1.index_select(0, inside)
            e2 = e2.index_select(0, inside)
            # index_select rather than advanced indexing: its backward is a plain index_add (much faster on CPU)
            v1 = edge_vectors.index_select(0, e1)
            v2 = edge_vectors.index_select(0, e2)
            r1 = r.index_select(0, e1)
            r2 = r.index_select(0, e2)
            r3 = torch.linalg.norm(v2 - v1, dim=1)
            cos = (v1 * v2).sum(1) / (r1 * r2)
            columns: List[torch.Tensor] = []
            for k in range(len(self.g4_zeta)):
                base = torch.clamp(1.0 + self.g4_lambda[k] * cos, min=0.0)
                columns.append(self.g4_angular_norm[k] * torch.pow(base, self.g4_zeta[k]))
            angular = torch.stack(columns, dim=1)  # [T, n_angular]
            weight = fc.index_select(0, e1) * fc.index_select(0, e2) * self.cutoff(r3)
            rsum = r1 * r1 + r2 * r2 + r3 * r3
            blocks: List[torch.Tensor] = []
            for k in range(len(self.g4_etas)):
                radial = torch.exp(-self.g4_etas[k] * rsum) * weight
                blocks.append(angular * radial.unsqueeze(1))
            g4 = torch.cat(blocks, dim=1)  # [T, n_eta * n_angular], column eta_index * n_angular + angular_index
            pair = self.pair_index[neighbor_species[e1], neighbor_species[e2]]
            out4 = torch.zeros(n * self.n_pairs, self.n_g4_combos, dtype=g4.dtype, device=g4.device)
            out4 = out4.index_add(0, center[e1] * self.n_pairs + pair, g4)
            out4 = out4.index_select(1, self.g4_combo_index)
            parts.append(out4.reshape(n, self.n_pairs * self.n_g4))
        return torch.cat(parts, dim=1)


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
