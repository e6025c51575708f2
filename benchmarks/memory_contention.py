"""What a second busy core costs the model: why 2 MPI ranks on 2 cores lose more than their extra work.

    OMP_NUM_THREADS=1 python benchmarks/memory_contention.py [--model M.pt] [--repeat 4] [--rounds 4]

Two measurements, each core pinned (taskset):
1. Memory bandwidth: a stream (c = a + b on 80 MB float32 arrays, numpy, one thread) alone on core 0, then one
   on each core at once (GB/s each); and the same for a compute-bound loop (64 x 64 matrix products in cache).
2. The model's CPU per energy + forces evaluation (one call, TorchScript, inputs/water/water_box_192.xyz repeated:
   12,288 atoms at --repeat 4) on core 1: alone, next to the stream on core 0, and next to the compute-bound loop,
   interleaved over --rounds rounds (medians).
If the model slows next to the stream and not next to the compute loop, its step is bound by memory bandwidth
that two cores share: two ranks that each do half the work then each run slower than one rank alone did, by what
the second row shows, however well the work is split.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load(kind: str, seconds: float) -> None:
    """Run one kind of load for `seconds` and print its rate (the worker of the other core)."""
    import numpy as np

    if kind == "stream":
        a = np.ones(20_000_000, np.float32)
        b, c = np.ones_like(a), np.empty_like(a)
        step, per = (lambda: np.add(a, b, out=c)), 3 * a.nbytes / 1e9
    else:
        m = np.random.default_rng(0).random((64, 64), dtype=np.float32)
        step, per = (lambda: [m @ m for _ in range(200)]), 1.0
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    print(f"{n * per / (time.perf_counter() - t0):.2f}", flush=True)


def pinned(core: int, *args: str) -> list[str]:
    return ["taskset", "-c", str(core), sys.executable, __file__, *args]


def rates(kind: str, seconds: float = 5.0) -> tuple[float, list[float]]:
    """(rate alone, [rate of each of two at once])."""
    alone = float(subprocess.run(pinned(0, "--load", kind, str(seconds)), capture_output=True, text=True,
                                 check=True).stdout)
    both = [subprocess.Popen(pinned(c, "--load", kind, str(seconds)), stdout=subprocess.PIPE, text=True)
            for c in (0, 1)]
    return alone, [float(p.communicate()[0]) for p in both]


def model_rounds(model: Path, repeat: int, rounds: int) -> dict[str, list[float]]:
    """Model CPU s per evaluation on this (pinned) process: alone, next to a stream, next to a compute loop."""
    import ase.io
    import numpy as np
    import torch
    from ase.neighborlist import neighbor_list
    from layers_overhead import mirrored  # benchmarks/: the graph as the engines pass it

    from mlmd.deploy.load import load_model
    from mlmd.engines.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    torch._C._set_graph_executor_optimize(False)  # the engines' setting
    m, card = load_model(model)
    dtype = getattr(torch, card.dtype)
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat(repeat)
    i, j, d = neighbor_list("ijD", atoms, float(m.r_cut))
    edges, vec, n_pairs = mirrored(i, j, d, np.ones(len(i), bool))  # pairs, then their reverses
    edges, n = torch.tensor(edges), len(atoms)
    species = m.species_of(torch.tensor(atoms.numbers))

    def evaluate() -> None:
        v = torch.tensor(vec, dtype=dtype, requires_grad=True)
        torch.autograd.grad(m.local_energies(species, edges, v, n, n_pairs).sum(), [v])

    evaluate()
    evaluate()
    print(f"model: {n:,} atoms, {len(vec):,} edges; {rounds} rounds of 2 evaluations each", flush=True)
    out: dict[str, list[float]] = {"alone": [], "beside a stream": [], "beside a compute loop": []}
    for r in range(rounds):
        for name, kind in (("alone", ""), ("beside a stream", "stream"), ("beside a compute loop", "compute")):
            other = subprocess.Popen(pinned(0, "--load", kind, "60"), stdout=subprocess.DEVNULL) if kind else None
            if other:
                time.sleep(1.0)  # its arrays allocated and touched
            t = time.process_time()
            evaluate()
            evaluate()
            out[name].append((time.process_time() - t) / 2)
            if other:
                other.kill()
                other.wait()
            print(f"  round {r + 1}: {name}: {out[name][-1]:.3f} CPU s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "inputs" / "water" / "water_model.pt")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--load", nargs=2, metavar=("KIND", "SECONDS"), help=argparse.SUPPRESS)  # worker
    args = ap.parse_args()
    if args.load:
        load(args.load[0], float(args.load[1]))
        return
    for kind, unit in (("stream", "GB/s"), ("compute", "loops/s")):
        alone, both = rates(kind)
        print(f"{kind}: alone {alone:.2f} {unit}; two at once {both[0]:.2f} / {both[1]:.2f} "
              f"({100 * (sum(both) / 2 / alone - 1):+.0f}% each)", flush=True)
    if subprocess.run(["taskset", "-cp", "1", str(os.getpid())], capture_output=True).returncode:
        print("cannot pin this process to core 1 (taskset failed): model rounds unpinned", flush=True)
    res = model_rounds(args.model, args.repeat, args.rounds)
    base = statistics.median(res["alone"])
    for name, v in res.items():
        print(f"model {name}: median {statistics.median(v):.3f} CPU s per evaluation "
              f"({100 * (statistics.median(v) / base - 1):+.0f}%)", flush=True)


if __name__ == "__main__":
    main()
