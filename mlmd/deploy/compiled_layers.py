"""Compiled programs for an engine that runs the layers one by one (LAMMPS on several MPI ranks, `parallel layers`).

Why: on several ranks the plugin exchanges the ghost atoms' node features between layers, so it cannot run the
one-call program of mlmd.deploy.compiled; through the TorchScript layer entries it loses the 1.7-2.2x that
Inductor's fused loops give. These programs are the same layers, compiled, with their derivatives traced in.

Every program reads the rank's graph as the one-call program does (edges in three blocks: pairs i->j between
local nodes, their reverses, the unpaired rest; every centre is a local node), with the nodes split into the
local ones and the ghosts, so that the number of local nodes is a shape, not an input:

    species_local [n] int64, species_ghost [g] int64, (h_local [n, w_k], h_ghost [g, w_k]: for k > 0),
    pair_index [2, P] int64, pair_vectors [P, 3], reverse_vectors [P, 3], rest_index [2, R] int64,
    rest_vectors [R, 3]                                                      (node indices: locals, then ghosts)

and the programs of a model of L layers (w_k: layer_widths()[k]; the features entering layer 0 are the species
embedding, computed inside, so layer 0 has no h inputs and no feature gradient):

    layer{k}_forward,  k < L-1:  ... -> h_out [n, w_{k+1}]          (new features of the local nodes)
    layer{k}_backward, k < L-1:  ..., g_out [n, w_{k+1}] -> (g_h_local, g_h_ghost (k > 0),) g_edges [2P + R, 3]
                                 (the vector-Jacobian product of layer_forward; the forward is computed again
                                 inside, rather than keeping its intermediate tensors between two programs)
    layer{L-1}_last:             ... -> energies [n] (eV), g_h_local, g_h_ghost, g_edges [2P + R, 3]
                                 (the last layer and the readout, with the gradient of the energies' sum)

g_edges: d(what the program's output is differentiated for)/d(edge vectors) through that layer's edge attributes;
the engine sums them over the programs. Each program computes the spherical harmonics and radial basis itself
(a few elementwise passes over the edges, fused by Inductor into the layer's loops).

Padding, as in mlmd.deploy.compiled: n, g, P, R >= 2; edges beyond the cutoff give exactly zero messages and
gradients, unconnected nodes are dropped (local padding nodes go between the locals and the ghosts).
All programs are models of one AOTInductor package (one file, one checksum), named as above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlmd.deploy.card_parts import CompiledLayersCard
from mlmd.model.checkpoint import file_sha256

INTERFACE = 1  # the signatures above; a change of inputs, outputs or names increments it
_EXAMPLE_N, _EXAMPLE_G, _EXAMPLE_P, _EXAMPLE_R = 13, 19, 17, 11  # distinct from each other and any fixed size


def program_names(n_layers: int) -> list[str]:
    """The programs of a model of n_layers layers, in the order one evaluation runs them (the backward ones
    from the last layer down)."""
    names = [f"layer{k}_forward" for k in range(n_layers - 1)] + [f"layer{n_layers - 1}_last"]
    return names + [f"layer{k}_backward" for k in reversed(range(n_layers - 1))]


class LayerProgram(nn.Module):
    """One program of the module docstring around a ShortRangePotential; kind: forward, backward or last."""

    def __init__(self, potential: nn.Module, layer: int, kind: str) -> None:
        super().__init__()
        self.potential = potential
        self.layer = layer
        self.kind = kind

    def forward(self, *inputs: torch.Tensor) -> Any:
        net = self.potential.network
        species_local, species_ghost = inputs[0], inputs[1]
        k = 2
        species = torch.cat([species_local, species_ghost])
        n = species_local.shape[0]
        wrt: list[torch.Tensor] = []
        differentiate = self.kind != "forward"
        if self.layer > 0:
            h_local = inputs[2].detach().requires_grad_(differentiate)
            h_ghost = inputs[3].detach().requires_grad_(differentiate)
            wrt = [h_local, h_ghost]
            h = torch.cat([h_local, h_ghost])
            k = 4
        else:
            h = net.embed_flat(species)
        pair_index, pair_vectors, reverse_vectors, rest_index, rest_vectors = inputs[k : k + 5]
        p = pair_vectors.shape[0]
        edge_index = torch.cat([pair_index, pair_index.flip(0), rest_index], dim=1)
        vectors = torch.cat([pair_vectors, reverse_vectors, rest_vectors])
        if differentiate:
            vectors = vectors.detach().requires_grad_(True)
        sh, radial = net.edge_features_flat(vectors, p)
        out = net.interaction_flat(self.layer, h, species, edge_index, sh, radial, p, n)
        if self.kind == "forward":
            return out
        if self.kind == "last":
            energies = self.potential.layer_readout(0, out, species_local)
            grads = torch.autograd.grad(energies.sum(), [*wrt, vectors])
            return (energies.detach(), *grads)
        grads = torch.autograd.grad(out, [*wrt, vectors], inputs[k + 5])
        return tuple(grads)


def _example(potential: nn.Module, layer: int, kind: str) -> tuple[torch.Tensor, ...]:
    dtype = next(potential.parameters()).dtype
    gen = torch.Generator().manual_seed(layer)
    n_species = len(potential.atomic_numbers)
    n, g, p, r = _EXAMPLE_N, _EXAMPLE_G, _EXAMPLE_P, _EXAMPLE_R
    widths = potential.network.feature_widths()

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64).add(0.5).to(dtype)

    species = torch.randint(0, n_species, (n + g,), generator=gen)
    out: list[torch.Tensor] = [species[:n], species[n:]]
    if layer > 0:
        out += [rand(n, widths[layer]), rand(g, widths[layer])]
    pair_index = torch.randint(0, n, (2, p), generator=gen)
    rest_index = torch.stack([torch.randint(0, n, (r,), generator=gen), torch.randint(0, n + g, (r,), generator=gen)])
    pv = rand(p, 3)
    out += [pair_index, pv, -pv, rest_index, rand(r, 3)]
    if kind == "backward":
        out.append(rand(n, widths[layer + 1]))
    return tuple(out)


def _dynamic_shapes(layer: int, kind: str) -> tuple[dict[int, Any], ...]:
    n = torch.export.Dim("n_local", min=2)
    g = torch.export.Dim("n_ghost", min=2)
    p = torch.export.Dim("n_pairs", min=2)
    r = torch.export.Dim("n_rest", min=2)
    shapes: list[dict[int, Any]] = [{0: n}, {0: g}]
    if layer > 0:
        shapes += [{0: n}, {0: g}]
    shapes += [{1: p}, {0: p}, {0: p}, {1: r}, {0: r}]
    if kind == "backward":
        shapes.append({0: n})
    return tuple(shapes)


def compile_layers(potential: nn.Module, out: str | Path, threads: int = 1) -> CompiledLayersCard:
    """Trace, export and compile every program of the module docstring into one AOTInductor package `out`."""
    import torch._inductor
    from torch._inductor.package import package_aoti
    from torch.fx.experimental.proxy_tensor import make_fx

    from mlmd.deploy.compiled import not_compilable

    reason = not_compilable(potential)
    if reason:
        raise ValueError(reason)
    n_layers = len(potential.network.layers)
    if n_layers < 2:
        raise ValueError("a one-layer model needs no layer-by-layer programs")
    potential = potential.eval()
    for q in potential.parameters():  # constants of the programs, not inputs
        q.requires_grad_(False)
    files: dict[str, Any] = {}
    for name in program_names(n_layers):
        layer, kind = int(name[5 : name.index("_")]), name[name.index("_") + 1 :]
        example = _example(potential, layer, kind)
        graph = make_fx(LayerProgram(potential, layer, kind), tracing_mode="symbolic",
                        _allow_non_fake_inputs=True)(*example)
        program = torch.export.export(graph, example, dynamic_shapes=_dynamic_shapes(layer, kind))
        files[name] = torch._inductor.aot_compile(
            program.module(check_guards=False), example,
            options={"aot_inductor.package": True, "cpp.threads": int(threads)})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.pt2")
    package_aoti(str(tmp), files)
    tmp.replace(out)
    return CompiledLayersCard(file=out.name, sha256=file_sha256(out), interface=INTERFACE)


def usable_layers(card: Any, model_path: str | Path) -> tuple[Path | None, str]:
    """(the layer programs' file, "") if an engine can run them here; (None, why not) otherwise. card: the
    model card's compiled entry (CompiledCard or None)."""
    from mlmd.deploy.compiled import usable

    _, why = usable(card, model_path)
    if why:
        return None, why
    layers = card.layers
    if layers is None:
        return None, "the compiled copy has no layer-by-layer programs (packaged before they existed)"
    if layers.interface != INTERFACE:
        return None, f"layer programs of interface {layers.interface}: not known to this mlmd"
    path = Path(model_path).parent / layers.file
    if not path.is_file():
        return None, f"compiled layer programs {path} are missing"
    if file_sha256(path) != layers.sha256:
        return None, f"compiled layer programs {path} are not the ones packaged with the model (checksum differs)"
    return path, ""


def load_programs(path: str | Path, n_layers: int) -> dict[str, Any]:
    """The programs of a layers package by name (callables on tensors, as listed in the module docstring)."""
    from torch._inductor.package import load_package

    return {name: load_package(str(path), name) for name in program_names(n_layers)}
