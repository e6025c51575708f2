"""Gradient clipping in mlmd's water recipe: the same training with and without train.clip_grad_norm.

    OMP_NUM_THREADS=1 python benchmarks/clip_grad_norm.py [--epochs 52] [--clips 0 1] [--out runs/clip]
    python benchmarks/clip_grad_norm.py --plot-only --out runs/clip

inputs/water/train.yaml without its extra NVE frames (the split the peer benchmarks share), one thread, the clip
values given (0: none); both trainings are the same until a batch's gradient is clipped. Without clipping this
training took one batch at epoch 48 whose gradient norm was 16.9 (the usual: 0.1-0.5) and lost 47 epochs
(2026-12-06, session 10). Writes benchmarks/clip_grad_norm.png (validation force MAE and the largest gradient norm
of each epoch) and copies each run's metrics.csv to benchmarks/data/clip_grad_norm_<clip>.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"


def train(clip: float, epochs: int, out: Path) -> None:
    cmd = [sys.executable, "-m", "mlmd.cli", "train", "inputs/water/train.yaml", "--set", 'data.extra_train_path=""',
           "--set", f"train.epochs={epochs}", "--set", "train.max_minutes=0", "--set", f"train.clip_grad_norm={clip:g}",
           "--output-dir", str(out), "--overwrite", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def plot(runs: dict[str, list[dict[str, str]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(6.5, 5.5), sharex=True)
    for clip, rows in runs.items():
        ep = [int(r["epoch"]) for r in rows]
        label = "no clipping" if float(clip) == 0 else f"clip_grad_norm {clip}"
        a.plot(ep, [float(r["val_forces_mae"]) for r in rows], label=label)
        b.plot(ep, [float(r["grad_norm_max"]) for r in rows], label=label)
    a.set_yscale("log")
    a.set_ylabel("validation force MAE (meV/Å)")
    a.legend()
    b.set_yscale("log")
    b.set_ylabel("largest gradient norm of the epoch")
    b.set_xlabel("epoch")
    a.set_title("mlmd water recipe (train.yaml), batch 1, lr 0.01, one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=52)
    ap.add_argument("--clips", nargs="+", default=["0", "1"])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "clip")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    runs = {}
    for clip in args.clips:
        out = args.out.resolve() / f"clip{clip}"
        if not args.plot_only:
            train(float(clip), args.epochs, out)
        shutil.copy(out / "metrics.csv", DATA / f"clip_grad_norm_{clip}.csv")
        runs[clip] = list(csv.DictReader(open(out / "metrics.csv")))
        best = min(runs[clip], key=lambda r: float(r["val_forces_mae"]))
        last = runs[clip][-1]
        print(f"clip {clip}: best validation force MAE {float(best['val_forces_mae']):.1f} meV/Å at epoch "
              f"{best['epoch']}, last {float(last['val_forces_mae']):.1f} at epoch {last['epoch']}; largest gradient "
              f"norm {max(float(r['grad_norm_max']) for r in runs[clip]):.2f}, clipped steps "
              f"{sum(int(r['grad_steps_clipped']) for r in runs[clip])}")
    plot(runs, REPO / "benchmarks" / "clip_grad_norm.png")


if __name__ == "__main__":
    main()
