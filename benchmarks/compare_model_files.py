"""CPU time of one energy + forces evaluation of several packaged model files on the same graph, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/compare_model_files.py OLD.pt NEW.pt [--replicate 2 2 4] [--rounds 6]

For code changes that keep the weights (a file repackaged with `mlmd package OLD.pt -o NEW.pt`): the graph is
inputs/water/water_box_192.xyz replicated (default 3,072 atoms), each pair once then its reverses (the order
pair_style mlmd gives the model), evaluated through `local_energies` + autograd under TorchScript's plain
executor, as the LAMMPS plugin does. Files alternate round by round so that the machine's load affects them alike;
prints the mean CPU seconds per evaluation of each, and checks that they give the same energy and forces.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.neighborlist import neighbor_list

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--replicate", nargs=3, type=int, default=[2, 2, 4])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    import vesin_torch  # noqa: F401  registers the neighbour-list class the archives use

    torch.set_num_threads(1)
    torch._C._jit_set_profiling_executor(False)
    modules = [torch.jit.load(str(p)) for p in args.models]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat(tuple(args.replicate))
    i, j, d = neighbor_list("ijD", atoms, float(modules[0].r_cut))
    sel = i < j
    edge_index = torch.tensor(np.stack([np.concatenate([i[sel], j[sel]]), np.concatenate([j[sel], i[sel]])]))
    vectors = torch.tensor(np.concatenate([d[sel], -d[sel]]))
    n_pairs = int(sel.sum())
    species = modules[0].species_of(torch.tensor(atoms.numbers))
    n = len(atoms)

    def evaluate(m):
        dt = next(m.parameters()).dtype
        v = vectors.to(dt).clone().requires_grad_(True)
        e = m.local_energies(species, edge_index, v, n, n_pairs)
        (g,) = torch.autograd.grad(e.sum(), [v])
        return float(e.detach().sum()), g

    results = [evaluate(m) for m in modules]
    for k, (e, g) in enumerate(results[1:], start=1):
        print(f"{args.models[k].name}: energy differs by {abs(e - results[0][0]):.3g} eV, edge gradients by "
              f"{float((g - results[0][1]).abs().max()):.3g} eV/Å from {args.models[0].name}")
    totals = [0.0] * len(modules)
    for _ in range(args.rounds):
        for k, m in enumerate(modules):
            evaluate(m)
            t0 = time.process_time()
            evaluate(m)
            evaluate(m)
            totals[k] += (time.process_time() - t0) / 2
    for path, total in zip(args.models, totals):
        print(f"{path}: {total / args.rounds:.3f} CPU s per energy + forces at {n} atoms")


if __name__ == "__main__":
    main()
