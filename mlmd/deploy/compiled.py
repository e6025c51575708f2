"""A compiled copy of the short-range model: torch.export + AOTInductor (a .pt2 file beside the TorchScript one).

Why: on one CPU thread the compiled program takes 1.7-2.2x less CPU per energy + forces than the TorchScript model
(benchmarks/SPEEDUPS.md): Inductor fuses the many per-edge elementwise products of the layers and their
backward into a few loops, where TorchScript's plain executor runs one ATen kernel (one pass over memory) each.

The program is one function of the graph an engine builds, with the derivative traced into it (no autograd at
run time); edges come as the pairs i->j, their reverses j->i (same order, negated vectors: the model computes
what depends on the distance once per pair) and the unpaired rest, each block with its own index and vectors:

    species [N] int64, pair_index [2, P] int64 (row 0: centre i), pair_vectors [P, 3], reverse_vectors [P, 3],
    rest_index [2, R] int64, rest_vectors [R, 3]
    -> energies [N] (eV, every node), grad [2P + R, 3] (dE/d(edge vector): pairs, reverses, rest)

This is the TorchScript model's local_energies(species, edge_index, vectors, n_local, n_mirrored=P) with its
gradient, to float round-off. N, P and R are dynamic from 2 up: `evaluate` pads a smaller graph with edges
longer than the cutoff (their messages and gradients are exactly zero: the envelope is 0 there, by torch.where)
and with unconnected nodes whose energies it drops.

Compiled programs load in the torch version that compiled them only (the card records it; the engines fall
back to the TorchScript file otherwise). Models with long-range terms, predicted charges or committees are not
compiled (their whole-system entry points are more than this function).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from mlmd.deploy.card_parts import CompiledCard
from mlmd.model.checkpoint import file_sha256

AOTI = "aoti"
INTERFACE = 1  # the signature above; a future change of inputs or outputs increments it
# example graph for tracing: sizes distinct from each other and from every fixed dimension (2, 3), so that the
# symbolic tracer gives each its own symbol
_EXAMPLE_N, _EXAMPLE_P, _EXAMPLE_R = 13, 17, 11


class EdgeGradients(nn.Module):
    """The compiled function (see the module docstring) around a ShortRangePotential."""

    def __init__(self, potential: nn.Module) -> None:
        super().__init__()
        self.potential = potential

    def forward(
        self, species: torch.Tensor, pair_index: torch.Tensor, pair_vectors: torch.Tensor,
        reverse_vectors: torch.Tensor, rest_index: torch.Tensor, rest_vectors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        edge_index = torch.cat([pair_index, pair_index.flip(0), rest_index], dim=1)
        vectors = torch.cat([pair_vectors, reverse_vectors, rest_vectors]).detach().requires_grad_(True)
        energies = self.potential(species, edge_index, vectors, pair_vectors.shape[0])
        (grad,) = torch.autograd.grad(energies.sum(), [vectors])
        return energies.detach(), grad


def not_compilable(potential: nn.Module, long_range: Optional[list] = None) -> Optional[str]:
    """Why this model cannot be compiled (None: it can)."""
    from mlmd.model.potential import ShortRangePotential

    if not isinstance(potential, ShortRangePotential):
        return "only single equivariant models are compiled (not committees or descriptor models)"
    if long_range:
        return "models with long-range terms are not compiled (their energies need the whole system)"
    if getattr(potential.network, "charge_readout", None) is not None:
        return "models that predict charges are not compiled"
    return None


def _example(potential: nn.Module) -> tuple[torch.Tensor, ...]:
    dtype = next(potential.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    n_species = len(potential.atomic_numbers)

    def vectors(n: int) -> torch.Tensor:
        return torch.rand(n, 3, generator=gen, dtype=torch.float64).add(0.5).to(dtype)

    species = torch.randint(0, n_species, (_EXAMPLE_N,), generator=gen)
    pair_index = torch.randint(0, _EXAMPLE_N, (2, _EXAMPLE_P), generator=gen)
    rest_index = torch.randint(0, _EXAMPLE_N, (2, _EXAMPLE_R), generator=gen)
    pv = vectors(_EXAMPLE_P)
    return species, pair_index, pv, -pv, rest_index, vectors(_EXAMPLE_R)


def compile_aoti(potential: nn.Module, out: str | Path, threads: int = 1) -> CompiledCard:
    """Trace the energies and their edge gradient (make_fx, symbolic shapes), export and compile them with
    AOTInductor into `out` (.pt2); `threads`: what the generated loops are parallelised for (1: no OpenMP).
    Takes about a minute for the bundled model on one core."""
    import torch._inductor.config as inductor_config
    from torch.fx.experimental.proxy_tensor import make_fx

    reason = not_compilable(potential)
    if reason:
        raise ValueError(reason)
    potential = potential.eval()
    for p in potential.parameters():  # constants of the program, not inputs
        p.requires_grad_(False)
    example = _example(potential)
    # autograd traced into the graph: the exported program holds the backward ops and runs without autograd
    graph = make_fx(EdgeGradients(potential), tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    n = torch.export.Dim("n_nodes", min=2)
    p = torch.export.Dim("n_pairs", min=2)
    r = torch.export.Dim("n_rest", min=2)
    shapes = ({0: n}, {1: p}, {0: p}, {0: p}, {1: r}, {0: r})
    program = torch.export.export(graph, example, dynamic_shapes=shapes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.pt2")
    with inductor_config.patch({"cpp.threads": int(threads)}):
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    tmp.replace(out)
    return CompiledCard(kind=AOTI, file=out.name, sha256=file_sha256(out), torch_version=torch.__version__,
                        threads=int(threads), interface=INTERFACE)


def usable(card: Optional[CompiledCard], model_path: str | Path) -> tuple[Optional[Path], str]:
    """(the compiled file, "") if an engine can run it here; (None, why not) otherwise."""
    if card is None:
        return None, "the model file has no compiled copy (mlmd package --compile aoti)"
    if card.kind != AOTI or card.interface != INTERFACE:
        return None, f"compiled copy of kind {card.kind!r}, interface {card.interface}: not known to this mlmd"
    if card.torch_version != torch.__version__:
        return None, f"compiled copy made by torch {card.torch_version}, this is torch {torch.__version__}"
    path = Path(model_path).parent / card.file
    if not path.is_file():
        return None, f"compiled copy {path} is missing"
    if file_sha256(path) != card.sha256:
        return None, f"compiled copy {path} is not the one packaged with the model (checksum differs)"
    return path, ""


def _padding(r_cut: float, dtype: torch.dtype, n_edges: int, node: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n_edges edges node -> node of length 2 r_cut: beyond the cutoff, exactly zero messages and gradients."""
    index = torch.full((2, n_edges), node, dtype=torch.long)
    vectors = torch.zeros(n_edges, 3, dtype=dtype)
    vectors[:, 0] = 2.0 * r_cut
    return index, vectors


class CompiledModel:
    """A loaded compiled copy: evaluate(...) is local_energies plus its edge gradient."""

    def __init__(self, path: str | Path, r_cut: float, dtype: torch.dtype) -> None:
        import torch._inductor

        self.runner: Any = torch._inductor.aoti_load_package(str(path))
        self.r_cut = float(r_cut)
        self.dtype = dtype

    def evaluate(
        self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_mirrored: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-node energies [N] and dE/d(edge vectors) [E, 3] of a graph in local_energies' layout (the first
        n_mirrored edges followed by their reverses, then the rest)."""
        n, e, p = species.shape[0], edge_index.shape[1], int(n_mirrored)
        vectors = vectors.to(self.dtype)
        pad_nodes = max(0, 2 - n)
        if pad_nodes:
            species = torch.cat([species, species.new_zeros(pad_nodes)])
        pairs = (edge_index[:, :p], vectors[:p], vectors[p : 2 * p])
        rest = (edge_index[:, 2 * p :], vectors[2 * p :])
        pad_pairs, pad_rest = max(0, 2 - p), max(0, 2 - (e - 2 * p))
        if pad_pairs:
            index, v = _padding(self.r_cut, self.dtype, pad_pairs, 0)
            pairs = (torch.cat([pairs[0], index], 1), torch.cat([pairs[1], v]), torch.cat([pairs[2], -v]))
        if pad_rest:
            index, v = _padding(self.r_cut, self.dtype, pad_rest, 0)
            rest = (torch.cat([rest[0], index], 1), torch.cat([rest[1], v]))
        energies, grad = self.runner(*[t.contiguous() for t in (species, *pairs, *rest)])
        if pad_pairs or pad_rest:
            p2 = p + pad_pairs
            grad = torch.cat([grad[:p], grad[p2 : p2 + p], grad[2 * p2 : 2 * p2 + e - 2 * p]])
        return energies[:n], grad

    def compute(
        self, positions: torch.Tensor, cell: torch.Tensor, species: torch.Tensor, pbc: torch.Tensor,
        compute_stress: bool, min_distance: float,
    ) -> dict[str, torch.Tensor]:
        """The TorchScript model's compute() for a model without long-range terms (float64 inputs and outputs):
        atomic_energies, energy, forces = -dE/dR and, with compute_stress and a 3D-periodic cell, stress =
        (1/V) dE/d(strain); on the same half neighbour list (vesin), each pair then its reverse."""
        from vesin_torch import NeighborList

        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or infinity")
        periodic = bool(pbc.any())
        box = cell if periodic else torch.zeros_like(cell)
        i, j, s = NeighborList(cutoff=self.r_cut, full_list=False).compute(
            positions.to(self.dtype), box.to(self.dtype), pbc, "ijS", True)
        i, j = i.to(torch.long), j.to(torch.long)
        # the vectors in float64, from the float64 positions (rounded to the model's dtype once, by evaluate)
        v = positions[j] - positions[i] + s.to(positions.dtype) @ box
        if v.shape[0] > 0:
            r = torch.linalg.norm(v, dim=1)
            k = int(torch.argmin(r))
            if float(r[k]) < min_distance:
                raise ValueError(f"atoms {int(i[k])} and {int(j[k])} are {float(r[k]):.3f} Å apart (closer than "
                                 f"{min_distance:.3f} Å)")
        edge_index = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
        vectors = torch.cat([v, -v])
        energies, grad = self.evaluate(species, edge_index, vectors, int(i.shape[0]))
        g = grad.to(positions.dtype)
        # edge c -> n has vector r_n - r_c (+ shift): dE/dr_n += g, dE/dr_c -= g
        d_dr = torch.zeros_like(positions).index_add_(0, edge_index[1], g).index_add_(0, edge_index[0], -g)
        atomic = energies.to(positions.dtype)
        out = {"atomic_energies": atomic, "energy": atomic.sum(), "forces": -d_dr}
        if compute_stress and bool(pbc.all()):
            # a strain eps moves every vector to v (1 + sym(eps)): dE/d(eps) = sym(sum_e v_e (x) g_e)
            w = vectors.t() @ g
            out["stress"] = 0.5 * (w + w.t()) / torch.abs(torch.linalg.det(cell))
        return out
