"""mlmd's block-wise equivariant layers against the e3nn modules they stand for (values and input gradients).

The e3nn references are built with float64 as the default dtype: built under float32 and cast, e3nn keeps
its Clebsch-Gordan buffers rounded to float32 (a 1e-8 relative difference in float64; mlmd's are exact).
"""

import contextlib

import pytest
import torch
from e3nn import o3

from mlmd.model.edge_tensor_product import EdgeTensorProduct, uvu_instructions
from mlmd.model.irreps_linear import IrrepsLinear, SpeciesSelfConnection
from mlmd.model.spherical_harmonics import SphericalHarmonics

DT = torch.float64


@contextlib.contextmanager
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def to_blocks(x: torch.Tensor, irreps: o3.Irreps) -> list[torch.Tensor]:
    """e3nn's flat [n, dim] layout (per irrep: mul-major) -> mlmd's blocks [n, 2l+1, mul]."""
    out = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        out.append(x[:, sl].reshape(-1, mul, ir.dim).transpose(1, 2))
    return out


def from_blocks(blocks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([b.transpose(1, 2).reshape(b.shape[0], -1) for b in blocks], dim=1)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    probe = torch.randn(out.shape, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return list(torch.autograd.grad((out * probe).sum(), inputs))


HIDDEN = [o3.Irreps("8x0e"), o3.Irreps("8x0e+4x1o"), o3.Irreps("8x0e+4x1o+4x2e"), o3.Irreps("6x0e+3x1o+3x2e+2x3o")]
MIXED = o3.Irreps("5x0e+3x1o+2x2e+4x1o+3x0e+2x2e")  # an irrep in several blocks, as a tensor product's output


@pytest.mark.parametrize("irreps_in", HIDDEN + [MIXED])
def test_linear_matches_e3nn(irreps_in):
    irreps_out = o3.Irreps("5x0e+4x0e") + irreps_in[1:] + o3.Irreps("2x1e")  # repeated, new and absent irreps
    torch.manual_seed(0)
    ref = o3.Linear(irreps_in, irreps_out).to(DT)
    torch.manual_seed(0)
    ours = IrrepsLinear(irreps_in, irreps_out).to(DT)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert torch.equal(ours.weight, ref.weight)  # same initialisation
    x = torch.randn(7, irreps_in.dim, dtype=DT, requires_grad=True)
    y_ref = ref(x)
    y = from_blocks(ours(to_blocks(x, irreps_in)))
    assert_same(y, y_ref)
    assert_same(grads(y, [x], 1)[0], grads(y_ref, [x], 1)[0])


@pytest.mark.parametrize("irreps_in", HIDDEN)
def test_self_connection_matches_e3nn(irreps_in):
    n_species = 3
    irreps_out = o3.Irreps("5x0e+4x0e") + irreps_in[1:]
    torch.manual_seed(1)
    ref = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{n_species}x0e"), irreps_out).to(DT)
    torch.manual_seed(1)
    ours = SpeciesSelfConnection(irreps_in, n_species, irreps_out).to(DT)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(9, irreps_in.dim, dtype=DT, requires_grad=True)
    species = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1])
    y_ref = ref(x, torch.nn.functional.one_hot(species, n_species).to(DT))
    y = from_blocks(ours(to_blocks(x, irreps_in), species))
    assert_same(y, y_ref)
    assert_same(grads(y, [x], 2)[0], grads(y_ref, [x], 2)[0])


@pytest.mark.parametrize("l_max", [0, 1, 2, 3, 4])
def test_spherical_harmonics_match_e3nn(l_max):
    v = torch.randn(50, 3, dtype=DT, requires_grad=True)
    ref = o3.spherical_harmonics(list(range(l_max + 1)), v, normalize=True, normalization="component")
    ours = torch.cat(SphericalHarmonics(l_max)(v, torch.linalg.norm(v, dim=1)), dim=1)
    assert_same(ours, ref)
    if l_max > 0:  # Y^0 is a constant
        assert_same(grads(ours, [v], 3)[0], grads(ref, [v], 3)[0])


def random_graph(n: int, e: int, dim: int, weight_numel: int, seed: int):
    """Node features [n, dim], edge vectors [e, 3] and per-edge weights (all requiring gradients), and random
    centre and neighbour indices."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, dtype=DT, generator=gen, requires_grad=True)
    vec = torch.randn(e, 3, dtype=DT, generator=gen, requires_grad=True)
    w = torch.randn(e, weight_numel, dtype=DT, generator=gen, requires_grad=True)
    center = torch.randint(0, n, (e,), generator=gen)
    neighbor = torch.randint(0, n, (e,), generator=gen)
    return x, vec, w, center, neighbor


@pytest.mark.parametrize("irreps_in", HIDDEN)
@pytest.mark.parametrize("l_sh", [1, 2, 3])
def test_edge_tensor_product_matches_e3nn(irreps_in, l_sh):
    """Sum over each centre's edges of TP(x_neighbour, Y(r_e), w_e), weights scaled by weight_scales()."""
    irreps_sh = o3.Irreps.spherical_harmonics(l_sh)
    wanted = {ir for _, ir in o3.Irreps("1x0e+1x1o+1x2e+1x1e+1x3o")}
    irreps_mid, instructions = uvu_instructions(irreps_in, irreps_sh, wanted)
    with float64_default():
        ref = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                               internal_weights=False)
    ours = EdgeTensorProduct(irreps_in, irreps_sh, irreps_mid, instructions).to(DT)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.weight_numel == ref.weight_numel
    n = 6
    x, vec, w, center, neighbor = random_graph(n, 40, irreps_in.dim, ref.weight_numel, seed=4)
    sh = o3.spherical_harmonics(irreps_sh, vec, normalize=True, normalization="component")
    msg = ref(x[neighbor], sh, w)
    y_ref = torch.zeros(n, msg.shape[1], dtype=DT).index_add(0, center, msg)
    sh_blocks = SphericalHarmonics(l_sh)(vec, torch.linalg.norm(vec, dim=1))
    w_ours = w * ours.weight_scales(DT, w.device)
    y = from_blocks(ours(to_blocks(x, irreps_in), sh_blocks, w_ours, center, neighbor, n))
    assert_same(y, y_ref)
    for a, b in zip(grads(y, [x, vec, w], 5), grads(y_ref, [x, vec, w], 5)):
        assert_same(a, b)


@pytest.mark.parametrize("irreps_in", HIDDEN[:3])
@pytest.mark.parametrize("l_sh", [1, 2])
def test_mixed_edge_tensor_product_matches_e3nn(irreps_in, l_sh):
    """forward_mixed = o3.Linear(sum over edges of the tensor product): the channel mixing done per edge where
    that narrows the messages, after the sum elsewhere."""
    irreps_sh = o3.Irreps.spherical_harmonics(l_sh)
    wanted = {ir for _, ir in o3.Irreps("1x0e+1x1o+1x2e")}
    irreps_mid, instructions = uvu_instructions(irreps_in, irreps_sh, wanted)
    irreps_out = o3.Irreps("6x0e+6x0e+2x1o+2x2e")  # fewer channels than irreps_mid for l > 0: mixed per edge
    with float64_default():
        tp_ref = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                                  internal_weights=False)
        torch.manual_seed(6)
        lin_ref = o3.Linear(irreps_mid, irreps_out)
    tp = EdgeTensorProduct(irreps_in, irreps_sh, irreps_mid, instructions).to(DT)
    lin = IrrepsLinear(irreps_mid, irreps_out).to(DT)
    lin.load_state_dict(lin_ref.state_dict())
    tp.mix_into(lin)
    assert any(tp.premix)
    if irreps_in.lmax == 0:
        assert not tp.premix[0]  # 8 scalars -> 12: summed first, then mixed (the other way)
    n = 5
    x, vec, w, center, neighbor = random_graph(n, 30, irreps_in.dim, tp_ref.weight_numel, seed=7)
    msg = tp_ref(x[neighbor], o3.spherical_harmonics(irreps_sh, vec, True, normalization="component"), w)
    y_ref = lin_ref(torch.zeros(n, msg.shape[1], dtype=DT).index_add(0, center, msg))
    sh_blocks = SphericalHarmonics(l_sh)(vec, torch.linalg.norm(vec, dim=1))
    groups = tp.forward_mixed(to_blocks(x, irreps_in), sh_blocks, w * tp.weight_scales(DT, w.device), center,
                              neighbor, n, lin.group_matrices())
    y = from_blocks(lin.split_outputs(groups, x))
    assert_same(y, y_ref)
    for a, b in zip(grads(y, [x, vec, w], 8), grads(y_ref, [x, vec, w], 8)):
        assert_same(a, b)
