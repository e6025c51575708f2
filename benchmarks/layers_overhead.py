"""The model's own cost of `parallel layers`, without MPI: CPU of the one-call (local) evaluation of a periodic
water box against the layer-by-layer evaluation summed over spatial subdomains, in one process.

    OMP_NUM_THREADS=1 python benchmarks/layers_overhead.py [--model M.pt] [--grids "2 2 1" "2 2 2"] [--repeat 4]

inputs/water/water_box_192.xyz repeated (4: 12,288 atoms) and cut into gx x gy x gz subdomains by fractional
position. For each subdomain the graph is built as pair_style mlmd builds it (own atoms, then the ghost atoms they
reach within r_cut; periodic images of an own atom are that atom), in both forms:
  layers  every edge into an own atom (pairs between own atoms mirrored, edges to ghosts after them): a pair
          across a boundary is computed by both of its ranks;
  split   each pair on one rank (the owner of the lower index; pair_style mlmd uses the atom-ID parity rule, which
          balances the ranks; the sum over ranks is the same), both directions: layer_messages + layer_update.
Exchanges are replaced by zeros (their cost is not the model's; their values do not change the work). Each figure
is the minimum CPU time of 3 evaluations (energy and edge gradients, TorchScript's plain executor as the engines
run it); efficiency = one call / sum over subdomains. What it leaves out, and LAMMPS's figures include: the
exchanges, LAMMPS's own per-rank work, and the slow-down of ranks that share a core or its caches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.neighborlist import neighbor_list

from mlmd.deploy.load import load_model
from mlmd.engines.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parent.parent


def cpu(f, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best


def mirrored(i, j, d, paired):
    """Edges as [pairs i < j (where paired), their reverses, the unpaired rest]."""
    sel = paired & (i < j)
    rest = ~paired
    src = np.concatenate([i[sel], j[sel], i[rest]])
    dst = np.concatenate([j[sel], i[sel], j[rest]])
    return np.stack([src, dst]), np.concatenate([d[sel], -d[sel], d[rest]]), int(sel.sum())


def subdomain_graphs(i, j, d, owner, n_parts, split: bool):
    graphs = []
    for p in range(n_parts):
        own = np.flatnonzero(owner == p)
        if split:
            mine = (i < j) & (owner[np.minimum(i, j)] == p) & ((owner[i] == p) | (owner[j] == p))
            pi, pj = i[mine], j[mine]
            ghosts = np.setdiff1d(np.unique(np.concatenate([pi[owner[pi] != p], pj[owner[pj] != p]])), own)
        else:
            sel = owner[i] == p
            pi, pj = i[sel], j[sel]
            ghosts = np.unique(pj[owner[pj] != p])
        nodes = np.concatenate([own, ghosts])
        node = -np.ones(len(owner), np.int64)
        node[nodes] = np.arange(len(nodes))
        if split:
            edges = np.stack([np.concatenate([node[pi], node[pj]]), np.concatenate([node[pj], node[pi]])])
            vec, n_mirrored = np.concatenate([d[mine], -d[mine]]), len(pi)
        else:
            edges, vec, n_mirrored = mirrored(node[pi], node[pj], d[sel], owner[pj] == p)
        graphs.append(dict(n_local=len(own), nodes=nodes, edges=torch.tensor(edges), vec=vec, n_mirrored=n_mirrored))
    return graphs


def layers_call(m, g, species, dtype, split: bool) -> None:
    """One subdomain's energies and edge gradients, as Model::layers_of_member / split_layers_of_member do."""
    widths = m.layer_widths(0)
    n_layers, nl = len(widths) - 1, g["n_local"]
    vec = torch.tensor(g["vec"], dtype=dtype, requires_grad=True)
    sh, radial = m.layer_edges(0, vec, g["n_mirrored"])
    sh_in, rad_in = sh.detach().requires_grad_(True), radial.detach().requires_grad_(True)
    sp = species[torch.tensor(g["nodes"])]
    n_nodes = sp.shape[0]
    x = m.layer_embed(0, sp)
    ins, msgs, sums, outs = [], [], [], []
    for k in range(n_layers):
        if k > 0:
            x = torch.cat([outs[-1].detach(), torch.zeros(n_nodes - nl, widths[k], dtype=dtype)]).requires_grad_(True)
        ins.append(x)
        if split:
            msgs.append(m.layer_messages(0, k, x, g["edges"], sh_in, rad_in, g["n_mirrored"], n_nodes))
            sums.append(msgs[-1][:nl].detach().clone().requires_grad_(True))
            outs.append(m.layer_update(0, k, x[:nl], sums[-1], sp[:nl]))
        else:
            outs.append(m.layer_interaction(0, k, x, sp, g["edges"], sh_in, rad_in, g["n_mirrored"], nl))
    last = outs[-1].detach().requires_grad_(True)
    e = m.layer_readout(0, last, sp[:nl])
    (gy,) = torch.autograd.grad(e.sum(), [last])
    g_sh, g_rad = None, None  # summed over the layers (the first taken as it is)
    for k in reversed(range(n_layers)):
        wanted = [ins[k]] if k > 0 else []
        if split:
            gu = torch.autograd.grad([outs[k]], [sums[k], *wanted], [gy])
            g_msg = torch.cat([gu[0], torch.zeros(n_nodes - nl, gu[0].shape[1], dtype=dtype)])
            gs = torch.autograd.grad([msgs[k]], [sh_in, rad_in, *wanted], [g_msg])
            gx = gs[2] + gu[1] if k > 0 else None
        else:
            gs = torch.autograd.grad([outs[k]], [sh_in, rad_in, *wanted], [gy])
            gx = gs[2] if k > 0 else None
        g_sh, g_rad = (gs[0], gs[1]) if g_sh is None else (g_sh + gs[0], g_rad + gs[1])
        if gx is not None:
            gy = gx[:nl]
    torch.autograd.grad([sh, radial], [vec], [g_sh, g_rad])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "inputs" / "water" / "water_model.pt")
    ap.add_argument("--grids", nargs="+", default=["2 2 1", "2 2 2", "4 2 1"])
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    torch._C._set_graph_executor_optimize(False)  # the engines' setting
    m, card = load_model(args.model)
    dtype = getattr(torch, card.dtype)
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat(args.repeat)
    i, j, d = neighbor_list("ijD", atoms, float(m.r_cut))
    n = len(atoms)
    species = m.species_of(torch.tensor(atoms.numbers))
    edges, vec, n_mirrored = mirrored(i, j, d, np.ones(len(i), bool))
    edges = torch.tensor(edges)

    def one_call() -> None:
        v = torch.tensor(vec, dtype=dtype, requires_grad=True)
        torch.autograd.grad(m.local_energies(species, edges, v, n, n_mirrored).sum(), [v])

    frac = atoms.get_scaled_positions() % 1.0
    forms = ["layers", "split"] if card.has_split_layers else ["layers"]
    for grid_text in args.grids:
        grid = [int(x) for x in grid_text.split()]
        cell = np.stack([np.minimum((frac[:, a] * grid[a]).astype(int), grid[a] - 1) for a in range(3)], 1)
        owner = (cell[:, 0] * grid[1] + cell[:, 1]) * grid[2] + cell[:, 2]
        parts = int(np.prod(grid))
        graphs = {f: subdomain_graphs(i, j, d, owner, parts, f == "split") for f in forms}
        for _ in range(2):  # warm-up
            one_call()
            for f in forms:
                for g in graphs[f]:
                    layers_call(m, g, species, dtype, f == "split")
        t1 = cpu(one_call)
        line = f"{n} atoms, {parts} subdomains ({grid_text}): one call {t1:.3f} CPU s"
        for f in forms:
            t = sum(cpu(lambda g=g, s=f == "split": layers_call(m, g, species, dtype, s)) for g in graphs[f])
            pairs = sum(g["n_mirrored"] + (g["edges"].shape[1] - 2 * g["n_mirrored"]) for g in graphs[f])
            line += f"; {f} {t:.3f} ({100 * t1 / t:.0f}%, {pairs:,} pair computations for {len(i) // 2:,} pairs)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
