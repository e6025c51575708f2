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

    layer{k}_forward,  k < L-1:  ... -> (h_out [n, w_{k+1}], saved_1, ..., saved_S)
                                 (new features of the local nodes, then the intermediate tensors its backward reads)
    layer{k}_backward, k < L-1:  ..., saved_1, ..., saved_S, g_out [n, w_{k+1}] -> (g_h_local, g_h_ghost (k > 0),)
                                 g_edges [2P + R, 3]    (the vector-Jacobian product of layer_forward)
    layer{L-1}_last:             ... -> energies [n] (eV), g_h_local, g_h_ghost, g_edges [2P + R, 3]
                                 (the last layer and the readout, with the gradient of the energies' sum)

The saved tensors are opaque to the engine (their number is what the forward program returns after h_out): it
keeps them from the forward program to the backward one, as autograd keeps a layer's intermediate tensors. How
the layer's forward and backward graph are cut into the two programs (what is kept, what is computed again from
it) is Inductor's min-cut partitioner's choice, as for a training step under torch.compile. Interface 1 (before
the saved tensors) computed the forward again inside each backward program: 35-40% more CPU time for layer 0.

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

INTERFACE = 2  # the signatures above; a change of inputs, outputs or names increments it
KNOWN_INTERFACES = (1, 2)  # what engines still run: 1 had no saved tensors (backward computed the forward again)
# distinct from each other, from their sums (n + g, 2P + R, P + R, ...) and from any fixed size (channels, widths)
_EXAMPLE_N, _EXAMPLE_G, _EXAMPLE_P, _EXAMPLE_R = 23, 29, 37, 31


def program_names(n_layers: int) -> list[str]:
    """The programs of a model of n_layers layers, in the order one evaluation runs them (the backward ones
    from the last layer down)."""
    names = [f"layer{k}_forward" for k in range(n_layers - 1)] + [f"layer{n_layers - 1}_last"]
    return names + [f"layer{k}_backward" for k in reversed(range(n_layers - 1))]


def _first_edge_input(layer: int) -> int:
    """Index of pair_index among a program's inputs (after the species and, for layer > 0, the features)."""
    return 4 if layer > 0 else 2


class LayerFunction(nn.Module):
    """Layer `layer` of a ShortRangePotential on the programs' inputs (module docstring): the new features of the
    local nodes, differentiable in whichever inputs require it."""

    def __init__(self, potential: nn.Module, layer: int) -> None:
        super().__init__()
        self.potential = potential
        self.layer = layer

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        net = self.potential.network
        species_local, species_ghost = inputs[0], inputs[1]
        species = torch.cat([species_local, species_ghost])
        k = _first_edge_input(self.layer)
        h = torch.cat([inputs[2], inputs[3]]) if self.layer > 0 else net.embed_flat(species)
        pair_index, pair_vectors, reverse_vectors, rest_index, rest_vectors = inputs[k : k + 5]
        p = pair_vectors.shape[0]
        edge_index = torch.cat([pair_index, pair_index.flip(0), rest_index], dim=1)
        vectors = torch.cat([pair_vectors, reverse_vectors, rest_vectors])
        sh, radial = net.edge_features_flat(vectors, p)
        return net.interaction_flat(self.layer, h, species, edge_index, sh, radial, p, species_local.shape[0])


def _differentiated(layer: int) -> list[int]:
    """The inputs a layer's gradient is taken for: the features (layer > 0), then the three edge-vector blocks."""
    k = _first_edge_input(layer)
    return ([2, 3] if layer > 0 else []) + [k + 1, k + 2, k + 4]


class LastLayerProgram(nn.Module):
    """layer{L-1}_last: the last layer and the readout, energies and their gradients in one program."""

    def __init__(self, potential: nn.Module, layer: int) -> None:
        super().__init__()
        self.potential = potential
        self.function = LayerFunction(potential, layer)
        self.layer = layer

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        wrt = _differentiated(self.layer)
        args = [x.detach().requires_grad_(True) if i in wrt else x for i, x in enumerate(inputs)]
        energies = self.potential.layer_readout(0, self.function(*args), inputs[0])
        grads = torch.autograd.grad(energies.sum(), [args[i] for i in wrt])
        return (energies.detach(), *_joined(grads))


def _joined(grads: Any) -> tuple[torch.Tensor, ...]:
    """(g_h_local, g_h_ghost,) g_edges: the three edge-vector blocks' gradients as one [2P + R, 3]."""
    g = list(grads)
    return (*g[: len(g) - 3], torch.cat(g[len(g) - 3 :]))


class _Partitioned:
    """A layer's forward and backward graphs, cut by AOTAutograd's min-cut partitioner (as torch.compile does for a
    training step), and what the two programs need to call them with the programs' inputs alone.

    The graphs are captured by torch.compile with a backend that keeps them: their inputs are the traced
    function's tensors, its parameters (lifted by Dynamo) and the sizes of its inputs (SymInts); the forward graph
    returns the layer's output, the saved tensors and the saved sizes; the backward graph reads the saved sizes,
    the saved tensors and the output's gradient. The programs bind the parameters as constants and compute every
    size from the shapes of their inputs (each Dynamo size symbol is one input's size)."""

    def __init__(self, potential: nn.Module, layer: int):
        import re

        from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
        from torch._dynamo.backends.common import aot_autograd

        graphs: dict[str, Any] = {}

        def keep(name: str):
            def compiler(gm: torch.fx.GraphModule, _inputs: Any) -> Any:
                graphs[name] = gm
                return make_boxed_func(gm)  # run once, as AOTAutograd calls its compiled graphs
            return compiler

        inner = aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                             partition_fn=min_cut_rematerialization_partition)

        def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            graphs["dynamo"] = (gm, list(example_inputs))
            return inner(gm, example_inputs)

        function = LayerFunction(potential, layer)
        # the forward program's example and dynamic shapes (for export); Dynamo is told the same dims
        self.example = _example(potential, layer, "forward")
        self.shapes = _dynamic_shapes(layer, "forward")
        wrt = _differentiated(layer)
        args = [x.detach().clone().requires_grad_(i in wrt) for i, x in enumerate(self.example)]
        for i, dims in enumerate(self.shapes):
            for dim in dims:
                torch._dynamo.mark_dynamic(args[i], dim)
        torch._dynamo.reset()
        try:
            out = torch.compile(function, backend=backend, fullgraph=True)(*args)
            out.backward(torch.ones_like(out))
        finally:
            torch._dynamo.reset()
        dynamo, dynamo_inputs = graphs["dynamo"]
        self.forward_graph, self.backward_graph = graphs["forward"], graphs["backward"]
        # each input of the forward graph: ("input", i), ("size", symbol) or ("constant", k)
        self.symbols: dict[str, tuple[int, int]] = {}
        self.plan: list[tuple[str, Any]] = []
        self.constants: list[torch.Tensor] = []
        for x in dynamo_inputs:
            if isinstance(x, torch.SymInt):
                sources = [src.name() for src in x.node.shape_env.var_to_sources.get(x.node.expr, [])]
                m = re.fullmatch(r"L\['\w+'\]\[(\d+)\]\.size\(\)\[(\d)\]", sources[0]) if sources else None
                if m is None:
                    raise RuntimeError(f"a traced size that is not an input's size: {x.node.expr} {sources}")
                self.symbols[str(x.node.expr)] = (int(m.group(1)), int(m.group(2)))
                self.plan.append(("size", str(x.node.expr)))
            elif any(x is a for a in args):
                self.plan.append(("input", next(i for i, a in enumerate(args) if a is x)))
            else:
                self.plan.append(("constant", len(self.constants)))
                self.constants.append(x.detach())
        if len(self.forward_graph.graph.find_nodes(op="placeholder")) != len(self.plan):
            raise RuntimeError("the forward graph's inputs are not Dynamo's (inputs merged or added)")
        # the backward graph's inputs: sizes (expressions of the symbols), then tensors: saved ones, then g_out
        self.backward_inputs: list[str | None] = []
        for node in self.backward_graph.graph.find_nodes(op="placeholder"):
            val = node.meta["val"]
            self.backward_inputs.append(str(val.node.expr) if isinstance(val, torch.SymInt) else None)
        grads = self.backward_graph.graph.find_nodes(op="output")[0].args[0]
        self.grad_positions = [k for k, g in enumerate(grads) if g is not None]
        expected = [k for k, (kind, v) in enumerate(self.plan) if kind == "input" and v in wrt]
        if self.grad_positions != expected:
            raise RuntimeError(f"the backward graph's gradients {self.grad_positions} are not the inputs' {expected}")

    def sizes(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        return {name: inputs[i].shape[dim] for name, (i, dim) in self.symbols.items()}


class ForwardProgram(nn.Module):
    """layer{k}_forward: (h_out, *saved) from the programs' inputs."""

    def __init__(self, part: _Partitioned) -> None:
        super().__init__()
        self.graph = part.forward_graph
        self.part = part
        for k, c in enumerate(part.constants):
            self.register_buffer(f"constant{k}", c)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sizes = self.part.sizes(inputs)
        args: list[Any] = []
        for kind, v in self.part.plan:
            args.append(inputs[v] if kind == "input" else sizes[v] if kind == "size" else getattr(self, f"constant{v}"))
        return tuple(x for x in self.graph(*args) if isinstance(x, torch.Tensor))


class BackwardProgram(nn.Module):
    """layer{k}_backward: (g_h_local, g_h_ghost,) g_edges from the programs' inputs, the saved tensors and g_out."""

    def __init__(self, part: _Partitioned) -> None:
        super().__init__()
        self.graph = part.backward_graph
        self.part = part
        self.n_inputs = len(part.example)  # the forward program's inputs, then the saved tensors and g_out

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sizes = self.part.sizes(inputs[: self.n_inputs])
        tensors = iter(inputs[self.n_inputs :])
        args: list[Any] = []
        for expr in self.part.backward_inputs:  # sizes: sums and products of the symbols, valid Python
            args.append(next(tensors) if expr is None else eval(expr, {"__builtins__": {}}, sizes))  # noqa: S307
        if next(tensors, None) is not None:
            raise ValueError("more tensors than the backward graph reads")
        grads = self.graph(*args)
        return _joined([grads[k] for k in self.part.grad_positions])


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
    options = {"aot_inductor.package": True, "cpp.threads": int(threads)}

    def compiled(program: nn.Module, example: tuple[torch.Tensor, ...], shapes: tuple[Any, ...]) -> Any:
        exported = torch.export.export(program, example, dynamic_shapes=shapes)
        return torch._inductor.aot_compile(exported.module(check_guards=False), example, options=options)

    files: dict[str, Any] = {}
    last = n_layers - 1
    example = _example(potential, last, "last")
    graph = make_fx(LastLayerProgram(potential, last), tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    files[f"layer{last}_last"] = compiled(graph, example, _dynamic_shapes(last, "last"))
    for layer in range(last):
        part = _Partitioned(potential, layer)
        forward = ForwardProgram(part)
        files[f"layer{layer}_forward"] = compiled(forward, part.example, (part.shapes,))
        with torch.no_grad():
            saved = forward(*part.example)
        g_out = _example(potential, layer, "backward")[-1]
        backward_example = (*part.example, *saved[1:], g_out)
        auto = tuple({d: torch.export.Dim.AUTO for d in range(t.dim())} for t in backward_example)
        files[f"layer{layer}_backward"] = compiled(BackwardProgram(part), backward_example, (auto,))
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
    if layers.interface not in KNOWN_INTERFACES:
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
