"""Evaluation speed of packaged models: milliseconds per energy + forces call on a periodic water box.

    OMP_NUM_THREADS=1 python benchmarks/evaluation_speed.py MODEL.pt [MODEL.pt ...] --molecules 64 --threads 1

Every model runs on the same box (64 waters = 192 atoms at 1 g/cm³ by default) through the ASE calculator,
the positions nudged before each call so nothing is cached; the median over --steps calls is printed with the
machine's load average (on a shared machine the absolute figures move with it: compare models from one run).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def water_box(n_molecules: int, seed: int = 0):
    from mlmd.data.generate import box_length, water_lattice

    return water_lattice(n_molecules, box_length(n_molecules, 1.0), np.random.default_rng(seed))


def time_model(path: str, atoms, steps: int, warmup: int = 3) -> tuple[float, dict]:
    from mlmd.engines.ase import MLMDCalculator

    atoms = atoms.copy()
    calc = MLMDCalculator(path)
    atoms.calc = calc
    rng = np.random.default_rng(1)
    times = []
    for k in range(warmup + steps):
        atoms.positions += rng.normal(0, 1e-3, atoms.positions.shape)
        t = time.perf_counter()
        atoms.get_forces()
        if k >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3, calc.card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--molecules", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    atoms = water_box(args.molecules)
    print(f"{len(atoms)} atoms, {args.threads} thread(s), torch {torch.__version__}, {platform.processor() or '?'}")
    print(f"{'model':<40}{'kind':<14}{'r_cut':>6}{'ms/step':>10}")
    for path in args.models:
        ms, card = time_model(path, atoms, args.steps)
        print(f"{os.path.basename(path):<40}{card.model_kind:<14}{card.r_cut:>6.1f}{ms:>10.1f}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
