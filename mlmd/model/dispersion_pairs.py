"""Pair functions of D3(BJ) with their derivatives, the smooth cutoff, and the mean-field tail correction.

The two-body energy and the coordination numbers depend on each pair through r^2 only. Their values and
d/d(r^2) are computed here without an autograd graph; mlmd.model.dispersion_two_body chains them into the
derivatives of the energy. Second derivatives are not available (D3 has no trainable parameters).

Smooth cutoff (``width`` > 0): the pair terms are multiplied by s(r) = 1 - 10x^3 + 15x^4 - 6x^5,
x = (r - (r_c - width)) / width clamped to [0, 1]: C2, so forces and their first derivatives are continuous.

Tail correction: for a homogeneous 3D-periodic system the two-body energy beyond the smooth cutoff is, with a
pair distribution g(r) = 1 there, E_tail = -1/(2V) sum_i sum_j C6_ij I_{s_i s_j},
I_st = int_0^inf 4 pi r^2 (1 - s(r)) [s6 / (r^6 + R0^6) + s8 (C8/C6) / (r^8 + R0^8)] dr (the same integral
LAMMPS's ``pair_modify tail yes`` adds for its pair styles). The sum over j runs over all atoms (images of i
included) and is O(N) through per-species sums of the CN weights.
"""

import math
from typing import Optional, Tuple

import numpy as np
import torch


def switch(r: torch.Tensor, r_off: float, width: float) -> torch.Tensor:
    """s(r): 1 below r_off - width, 0 beyond r_off, C2 in between."""
    x = torch.clamp((r - (r_off - width)) / width, 0.0, 1.0)
    return 1.0 - x * x * x * (10.0 + x * (6.0 * x - 15.0))


def _switch_and_slope(r: torch.Tensor, r_off: float, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s(r) = (1 - x)^3 (1 + 3x + 6x^2) (= 1 - 10x^3 + 15x^4 - 6x^5) and ds/d(r^2) = -15 x^2 (1 - x)^2 / (width r)
    (r > 0), in few passes over the pairs (in place where the inputs carry no autograd graph)."""
    x = ((r - (r_off - width)) * (1.0 / width)).clamp_(0.0, 1.0)
    omx = 1.0 - x
    xo = x * omx
    s = (x * 6.0 + 3.0).mul_(x).add_(1.0).mul_(omx * omx).mul_(omx)
    return s, (xo * xo).mul_(-15.0 / width).div_(r)


def switch_of_r2(r2: torch.Tensor, cutoff: float, width: float) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(s, ds/d(r^2)) of the smooth cutoff at squared distances r2, or None for a sharp cutoff (width 0): computed
    once and passed to both damping_terms and cn_count_terms when their cutoffs are equal."""
    if width > 0.0:
        return _switch_and_slope(torch.sqrt(r2), cutoff, width)
    return None


def damping_terms(
    r2: torch.Tensor, r0_6: torch.Tensor, r0_8: torch.Tensor, s8rr: torch.Tensor, s6: float, cutoff: float,
    width: float, sw: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D = [s6 / (r^6 + R0^6) + s8 C8/C6 / (r^8 + R0^8)] s(r) and dD/d(r^2); inputs without autograd.
    ``sw``: switch_of_r2(r2, cutoff, width) if already computed (else computed here when width > 0)."""
    r4 = r2 * r2
    r6 = r4 * r2
    t6 = (r6 + r0_6).reciprocal_()
    t8 = (r4 * r4).add_(r0_8).reciprocal_()
    a6 = t6 if s6 == 1.0 else t6 * s6
    a8 = s8rr * t8
    d = a6 + a8
    dd = (r4 * t6).mul_(a6).mul_(-3.0).addcmul_(r6 * t8, a8, value=-4.0)  # -3 r^4 t6 a6 - 4 r^6 t8 a8
    if sw is None and width > 0.0:
        sw = _switch_and_slope(torch.sqrt(r2), cutoff, width)
    if sw is not None:
        s, ds = sw
        dd = dd.mul_(s).addcmul_(d, ds)
        d = d.mul_(s)
    return d, dd


def cn_count_terms(
    r2: torch.Tensor, krc: torch.Tensor, k_cn: float, cutoff: float, width: float,
    sw: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting function 1 / (1 + exp(-(k (Rcov_i + Rcov_j) / r - k))) s(r) and its d/d(r^2) (``sw``: as in
    damping_terms); inputs without autograd."""
    rinv = torch.rsqrt(r2)
    a = krc * rinv
    c = (a - k_cn).sigmoid_()
    dc = (1.0 - c).mul_(c).mul_(a).div_(r2).mul_(-0.5)
    if sw is None and width > 0.0:
        sw = _switch_and_slope(r2 * rinv, cutoff, width)
    if sw is not None:
        s, ds = sw
        dc = dc.mul_(s).addcmul_(c, ds)
        c = c * s
    return c, dc


def tail_integrals(r0: np.ndarray, s8rr: np.ndarray, s6: float, cutoff: float, width: float) -> np.ndarray:
    """I_st (bohr^3) for every species pair (arrays [S, S] of R0 and s8 C8/C6), see the module docstring."""
    x, wq = np.polynomial.legendre.leggauss(96)
    total = np.zeros_like(r0)
    r_on = cutoff - width

    def damp(r: np.ndarray) -> np.ndarray:
        r = r[..., None, None]
        return 4.0 * math.pi * r * r * (s6 / (r**6 + r0**6) + s8rr / (r**8 + r0**8))

    if width > 0.0:  # the switching region: weight 1 - s(r)
        r = r_on + 0.5 * width * (x + 1.0)
        t = (r - r_on) / width
        one_minus_s = t**3 * (10.0 + t * (6.0 * t - 15.0))
        total += 0.5 * width * np.einsum("q,qst->st", wq * one_minus_s, damp(r))
    # beyond the cutoff (weight 1): r = r_c / y, y in (0, 1]
    y = 0.5 * (x + 1.0)
    r = cutoff / y
    total += 0.5 * np.einsum("q,qst->st", wq * cutoff / (y * y), damp(r))
    return total
