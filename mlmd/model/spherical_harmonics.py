"""e3nn's real spherical harmonics of edge directions as blocks [E, 2l+1], one per l, for the message passing.

The same functions as e3nn's o3.spherical_harmonics(normalize=True, normalization="component": |Y^l|^2 = 2l+1),
in e3nn's component order (tests/unit/test_irreps_ops.py compares): closed forms up to l = 2, a
Clebsch-Gordan recurrence above. (SOAP's orthonormal solid harmonics, another convention, are in
mlmd.model.soap_basis.)
"""

import math
from typing import List

import torch
from e3nn import o3
from torch import nn


def spherical_harmonics(l_max: int, vectors: torch.Tensor, r: torch.Tensor) -> List[torch.Tensor]:
    """e3nn's real spherical harmonics of the unit vectors (normalize=True, "component": |Y^l|^2 = 2l+1),
    one block [E, 2l+1] per l = 0..l_max (l <= 2; e3nn's polynomials in x, y, z order)."""
    if l_max > 2:
        raise ValueError("spherical_harmonics: l_max <= 2 (SphericalHarmonics goes further)")
    out = [torch.ones_like(r).unsqueeze(1)]
    if l_max == 0:
        return out
    u = vectors / r.unsqueeze(1)
    out.append(math.sqrt(3.0) * u)
    if l_max == 1:
        return out
    x = u[:, 0]
    y = u[:, 1]
    z = u[:, 2]
    x2 = x * x
    z2 = z * z
    y2 = y * y
    out.append(
        torch.stack(
            [
                math.sqrt(15.0) * x * z,
                math.sqrt(15.0) * x * y,
                math.sqrt(5.0) * (y2 - 0.5 * (x2 + z2)),
                math.sqrt(15.0) * y * z,
                (0.5 * math.sqrt(15.0)) * (z2 - x2),
            ],
            dim=1,
        )
    )
    return out


class SphericalHarmonics(nn.Module):
    """spherical_harmonics for any l_max: closed forms up to l = 2, then Y^(l+1) from Y^l and the unit vector
    through the Clebsch-Gordan coefficients C(l+1, l, 1), with a constant per l fixed against e3nn."""

    coefs: List[torch.Tensor]

    def __init__(self, l_max: int) -> None:
        super().__init__()
        self.l_max = int(l_max)
        self.coefs = []
        for l in range(3, self.l_max + 1):
            c = o3.wigner_3j(l, l - 1, 1, dtype=torch.float64)
            # the scale (and sign) that makes the recurrence give e3nn's Y^l, from a few random directions
            v = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(l))
            ref = o3.spherical_harmonics(list(range(l + 1)), v, True, normalization="component")
            prev = ref[:, (l - 1) ** 2 : l * l]
            rec = torch.einsum("ijk,ej,ek->ei", c, prev, torch.nn.functional.normalize(v, dim=1))
            target = ref[:, l * l : (l + 1) ** 2]
            k = float((rec * target).sum() / (rec * rec).sum())
            if not torch.allclose(k * rec, target, atol=1e-9):
                raise RuntimeError(f"spherical harmonics recurrence does not reproduce e3nn at l = {l}")
            self.coefs.append(k * c)

    def forward(self, vectors: torch.Tensor, r: torch.Tensor) -> List[torch.Tensor]:
        out = spherical_harmonics(min(self.l_max, 2), vectors, r)
        if self.l_max > 2:
            u = vectors / r.unsqueeze(1)
            for coef in self.coefs:
                c = coef.to(dtype=u.dtype, device=u.device)
                prev = out[-1]
                # Y^l_i = sum_jk c_ijk Y^(l-1)_j u_k
                out.append(torch.einsum("ej,ijk->eik", prev, c).mul(u.unsqueeze(1)).sum(2))
        return out
