"""The cut of a layer into a forward program that saves tensors and a backward program that reads them
(mlmd.deploy.compiled_layers, interface 2), run as Python modules before Inductor compiles them: for a middle layer
of a three-layer model (features in, so feature gradients out) and for layer 0, on graphs of other sizes than the
one traced, the programs equal the layer and its vector-Jacobian product by autograd."""

from __future__ import annotations

import torch

from conftest import make_potential
from mlmd.deploy.compiled_layers import BackwardProgram, ForwardProgram, LayerFunction, _Partitioned


def _graph(potential, layer: int, n: int, g: int, p: int, r: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Program inputs of a random rank graph (n local nodes, g ghosts, p pairs, r other edges), edges 0.5-2.4 Å."""
    gen = torch.Generator().manual_seed(seed)
    width = potential.network.feature_widths()[layer]

    def vectors(m: int) -> torch.Tensor:
        d = torch.randn(m, 3, generator=gen, dtype=torch.float64)
        return d / d.norm(dim=1, keepdim=True) * (0.5 + 1.9 * torch.rand(m, 1, generator=gen, dtype=torch.float64))

    species = torch.randint(0, 2, (n + g,), generator=gen)
    out = [species[:n].clone(), species[n:].clone()]
    if layer > 0:
        out += [torch.randn(n, width, generator=gen, dtype=torch.float64),
                torch.randn(g, width, generator=gen, dtype=torch.float64)]
    pv = vectors(p)
    rest = torch.stack([torch.randint(0, n, (r,), generator=gen), torch.randint(0, n + g, (r,), generator=gen)])
    return (*out, torch.randint(0, n, (2, p), generator=gen), pv, -pv, rest, vectors(r))


def test_saved_tensor_programs_equal_the_layer_and_its_gradient():
    potential = make_potential(n_layers=3)
    for q in potential.parameters():
        q.requires_grad_(False)
    for layer in (1, 0):
        part = _Partitioned(potential, layer)
        forward, backward = ForwardProgram(part), BackwardProgram(part)
        for seed, sizes in enumerate([(7, 5, 9, 4), (40, 61, 150, 83)]):
            inputs = _graph(potential, layer, *sizes, seed=seed)
            out = forward(*inputs)
            assert len(out) > 1  # the features, then the saved tensors
            # the reference: the layer under autograd, gradients for the features and the three edge-vector blocks
            wrt = ([2, 3] if layer > 0 else []) + [len(inputs) - 4, len(inputs) - 3, len(inputs) - 1]
            args = [x.clone().requires_grad_(i in wrt) for i, x in enumerate(inputs)]
            reference = LayerFunction(potential, layer)(*args)
            torch.testing.assert_close(out[0], reference.detach(), rtol=0, atol=1e-12)
            g_out = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            grads = backward(*inputs, *out[1:], g_out)
            g = torch.autograd.grad(reference, [args[i] for i in wrt], g_out)
            expected = (*g[:-3], torch.cat(g[-3:]))
            assert len(grads) == len(expected) == (3 if layer > 0 else 1)
            for a, b in zip(grads, expected):
                assert a.shape == b.shape and float(b.abs().max()) > 1e-3
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
