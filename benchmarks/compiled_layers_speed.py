"""CPU time of one rank's layer-by-layer evaluation (pair_style mlmd `parallel layers`): the TorchScript layer
entries with autograd between them vs the compiled layer programs (mlmd.deploy.compiled_layers), interleaved.

    OMP_NUM_THREADS=1 python benchmarks/compiled_layers_speed.py MODEL.pt [--sizes 2 4] [--rounds 5]

MODEL.pt: packaged with `mlmd package ... --compile aoti`. The system is inputs/water/water_box_192.xyz replicated
n x n x n; the rank owns the atoms in the lower half of the box along x (2 ranks in a slab decomposition): its
graph holds its atoms' edges, pairs of its own atoms with their reverses, the others to ghost nodes (one per
image). The feature exchange is left out (random ghost features: the cost does not depend on the values), so the
figures are the model's work alone. Printed per size: CPU ms of each route (minimum over the rounds), their ratio,
and the compiled route's parts: layer 0 forward, the last layer with readout and gradients, layer 0 backward (from
the tensors the forward program saved; programs packaged before those, interface 1, compute the forward again).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.neighborlist import neighbor_list

REPO = Path(__file__).resolve().parent.parent


def rank_graph(module, n: int, dtype: torch.dtype):
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat((n, n, n))
    own = atoms.get_scaled_positions()[:, 0] < 0.5
    order = np.argsort(~own, kind="stable")  # own atoms first
    atoms = atoms[order]
    n_local = int(own.sum())
    i, j, d, s = neighbor_list("ijDS", atoms, float(module.r_cut))
    keep = i < n_local
    i, j, d, s = i[keep], j[keep], d[keep], s[keep]
    pair = (j < n_local) & (i < j) & ~s.any(1)
    rest = ~pair & ~((j < n_local) & (i > j) & ~s.any(1))  # everything but the reverses of the pairs
    keys = [(int(a), *map(int, b)) for a, b in zip(j[rest], s[rest])]
    ghosts = {k: n_local + g for g, k in enumerate(dict.fromkeys(k for k in keys if k[0] >= n_local or any(k[1:])))}
    dst = np.array([ghosts.get(k, k[0]) for k in keys])
    species = module.species_of(torch.tensor(np.concatenate([atoms.numbers[:n_local],
                                                             atoms.numbers[[k[0] for k in ghosts]]])))
    t = torch.tensor
    return (species, n_local, t(np.stack([i[pair], j[pair]])), t(d[pair], dtype=dtype),
            t(np.stack([i[rest], dst])), t(d[rest], dtype=dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--sizes", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from mlmd.deploy.compiled_layers import load_programs, usable_layers
    from mlmd.deploy.load import load_model
    from mlmd.engines.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    module, card = load_model(args.model)
    path, why = usable_layers(card.compiled, args.model)
    if path is None:
        raise SystemExit(f"{args.model}: {why}")
    if card.n_layers != 2:
        raise SystemExit("written for two-layer models (forward 0, last 1, backward 0)")
    programs = load_programs(path, card.n_layers)
    interface = card.compiled.layers.interface
    dtype = getattr(torch, card.dtype)
    widths = module.layer_widths(0)

    def scripted(species, n, pair_index, pv, rest_index, xv, h_ghost):
        """What Model::layers_of_member does, the exchanges replaced by h_ghost."""
        p = pv.shape[0]
        edge_index = torch.cat([pair_index, pair_index.flip(0), rest_index], 1)
        vectors = torch.cat([pv, -pv, xv]).requires_grad_(True)
        with torch.jit.optimized_execution(False):
            sh, radial = module.layer_edges(0, vectors, p)
            sh_in, radial_in = sh.detach().requires_grad_(True), radial.detach().requires_grad_(True)
            y0 = module.layer_interaction(0, 0, module.layer_embed(0, species), species, edge_index, sh_in,
                                          radial_in, p, n)
            x1 = torch.cat([y0.detach(), h_ghost]).requires_grad_(True)
            y1 = module.layer_interaction(0, 1, x1, species, edge_index, sh_in, radial_in, p, n)
            last = y1.detach().requires_grad_(True)
            e = module.layer_readout(0, last, species[:n])
        (gy,) = torch.autograd.grad(e.sum(), [last])
        g_sh1, g_r1, gx = torch.autograd.grad(y1, [sh_in, radial_in, x1], gy)
        g_sh0, g_r0 = torch.autograd.grad(y0, [sh_in, radial_in], gx[:n])
        (g,) = torch.autograd.grad([sh, radial], [vectors], [g_sh0 + g_sh1, g_r0 + g_r1])
        return e.detach(), g

    parts = {"forward 0": 0.0, "last": 0.0, "backward 0": 0.0}

    def compiled(species, n, pair_index, pv, rest_index, xv, h_ghost):
        sl, sg = species[:n], species[n:]
        edges = (pair_index, pv, -pv, rest_index, xv)
        t0 = time.process_time()
        saved = programs["layer0_forward"](sl, sg, *edges)
        if interface == 1:
            saved = [saved]
        y0 = saved[0]
        t1 = time.process_time()
        e, gl, gg, gv = programs["layer1_last"](sl, sg, y0, h_ghost, *edges)
        t2 = time.process_time()
        # gl: what the reverse exchange would add to
        (gv0,) = programs["layer0_backward"](sl, sg, *edges, *saved[1:], gl)
        t3 = time.process_time()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[name] += dt
        return e, gv + gv0

    print(f"{args.model} (layer programs of interface {interface}), torch {torch.__version__}, 1 thread; CPU ms of one "
          f"rank's layers (min of {args.rounds})")
    for n in args.sizes:
        species, n_local, pi, pv, ri, xv = rank_graph(module, n, dtype)
        gen = torch.Generator().manual_seed(0)
        h_ghost = torch.randn(species.shape[0] - n_local, widths[1], generator=gen, dtype=torch.float64).to(dtype)
        graph = (species, n_local, pi, pv, ri, xv, h_ghost)
        (e0, g0), (e1, g1) = scripted(*graph), compiled(*graph)
        best = {"TorchScript": float("inf"), "compiled": float("inf")}
        best_parts = dict.fromkeys(parts, float("inf"))
        for _ in range(args.rounds):
            for name, f in (("TorchScript", scripted), ("compiled", compiled)):
                for k in parts:
                    parts[k] = 0.0
                t0 = time.process_time()
                f(*graph)
                best[name] = min(best[name], time.process_time() - t0)
                if name == "compiled":
                    best_parts = {k: min(best_parts[k], parts[k]) for k in parts}
        ts, co = best["TorchScript"], best["compiled"]
        n_edges = 2 * pv.shape[0] + xv.shape[0]
        print(f"{n_local:>6} local atoms {species.shape[0] - n_local:>5} ghosts {n_edges:>7} edges: TorchScript "
              f"{ts * 1e3:8.1f}  compiled {co * 1e3:8.1f}  ratio {ts / co:.2f}  (compiled: "
              + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in best_parts.items())
              + f")  max diff: energy {float((e0 - e1).abs().max()):.1e} eV, edge gradient "
              f"{float((g0 - g1).abs().max()):.1e} eV/Å  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
