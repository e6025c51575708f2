"""Block-wise evaluation of e3nn's equivariant layers, for the message passing of mlmd.model.equivariant.

Each module stands for an e3nn module (o3.Linear, o3.TensorProduct with per-edge "uvu" weights,
o3.FullyConnectedTensorProduct with one-hot species): it takes over that module's parameters and buffers under
the same names, its initialisation and its instructions (path weights, weight layout), and computes the same
function up to float round-off (tests/unit/test_irreps_ops.py compares with e3nn). They live in
mlmd.model.irreps_linear (the linear maps), mlmd.model.edge_tensor_product (the tensor product over edges) and
mlmd.model.spherical_harmonics (the edge harmonics); this module holds the activations' normalisation and the
names mlmd.model.equivariant imports.

Why not call e3nn: its generated code works on one flat [.., dim] tensor, slicing it per irrep and
concatenating the results; on the per-edge tensors of a message-passing step every slice costs a full-size
zero-filled gradient in the backward pass (the forces), and that dominated the evaluation time. Here a feature
is a list of blocks [n, 2l+1, mul] (component-major, channels last): no slicing, the channel mixing is a plain
matrix product, and the couplings that occur for l <= 2 with the l = 0 or l_in = l_sh paths are products and
dot products (the Clebsch-Gordan matrix is then a multiple of the identity), a small matrix product otherwise.
"""

import torch

from mlmd.model.edge_tensor_product import EdgeTensorProduct, uvu_instructions
from mlmd.model.irreps_linear import IrrepsLinear, SpeciesSelfConnection
from mlmd.model.spherical_harmonics import SphericalHarmonics

# mlmd.model.equivariant imports these from here
__all__ = [
    "SILU_SCALE",
    "EdgeTensorProduct",
    "IrrepsLinear",
    "SpeciesSelfConnection",
    "SphericalHarmonics",
    "uvu_instructions",
]


def _silu_second_moment_scale() -> float:
    # 1 / sqrt(E[silu(x)^2]) for x ~ N(0, 1), so activations keep unit second moment (e3nn's normalize2mom idea)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    return float(torch.nn.functional.silu(x).pow(2).mean().rsqrt())


SILU_SCALE = _silu_second_moment_scale()
