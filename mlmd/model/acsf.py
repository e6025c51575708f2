"""Atom-centred symmetry functions (ACSF, Behler) in torch: radial G2 and angular G4, element-resolved.

Works on the graph every mlmd model sees, (species [N], edge_index [2, E] with row 0 the centre i and row 1
the neighbour j of a full neighbour list, edge_vectors [E, 3] = r_j - r_i), returns one row of features per
atom, is differentiable (forces by autograd through it, twice for training on forces) and compiles with
torch.jit.script. The angular terms need pairs of edges that share a centre; `edge_pairs` builds them from
edge_index inside forward. SOAP, the other descriptor, is in mlmd.model.soap.

Conventions (matched to DScribe 2.1.2; tests/unit/test_descriptors.py: to 1e-6)
-------------------------------------------------------------------------------
Species are indices into the model's sorted list of atomic numbers (DScribe also sorts by Z). With f_c the
cutoff function and sums over neighbours within r_cut:
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
"""

import math
from typing import List, Tuple

import torch
from torch import nn

from mlmd.model.radial import PolynomialEnvelope

CUTOFF_FUNCTIONS = ("cosine", "polynomial")


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
