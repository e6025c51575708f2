"""Cost of one energy + forces evaluation against the number of atoms: linear for a short-range model.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [MODEL.pt] [--max-atoms 100000] [--threads 1]

Liquid water: inputs/water/water_box_192.xyz (64 equilibrated molecules) replicated 1x1x1, 2x1x1, 2x2x1, ...
(192, 384, 768, ... atoms) and evaluated through the ASE calculator (the packaged model's own neighbour list,
forces by autograd). Each size runs in a fresh process, so that its peak resident memory is its own; sizes
stop at --max-atoms, or before the peak memory predicted from the previous size (per atom) would pass
--memory-fraction of the memory the machine has available at that moment (the machine is shared).
Per size: median wall time per step, median CPU time per step (user + system: what the computation costs,
whatever else runs on the machine), peak memory and its increase per atom over the process's memory after
loading the model. Writes a JSON file and a PNG (time per step and per atom against N, with the power law
fitted to the CPU times: exponent 1 = linear). Without MODEL the bundled inputs/water/water_model.pt is used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPLICAS = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (4, 2, 2), (4, 4, 2), (4, 4, 4), (8, 4, 4), (8, 8, 4),
            (8, 8, 8), (16, 8, 8)]


def memory_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure_one(model: str, replicate: tuple[int, int, int], threads: int, steps: int) -> dict:
    """One size, in this process: times of `steps` evaluations (after 2 warm-up ones) and the peak memory."""
    import resource

    import ase.io
    import numpy as np
    import torch

    from mlmd.engines.ase import MLMDCalculator

    torch.set_num_threads(threads)
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat(replicate)
    calc = MLMDCalculator(model)
    atoms.calc = calc
    base_mb = resident_mb()
    rng = np.random.default_rng(0)
    wall, cpu = [], []
    def cpu_seconds() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    for k in range(2 + steps):
        atoms.positions += rng.normal(0.0, 1e-3, atoms.positions.shape)
        t0, c0 = time.perf_counter(), cpu_seconds()
        atoms.get_forces()
        c1, t1 = cpu_seconds(), time.perf_counter()
        if k >= 2:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "atoms": len(atoms),
        "replicate": list(replicate),
        "steps": steps,
        "wall_ms": float(np.median(wall)) * 1e3,
        "wall_min_ms": float(np.min(wall)) * 1e3,
        "cpu_ms": float(np.median(cpu)) * 1e3,
        "base_mb": base_mb,
        "peak_mb": peak_mb,
        "kb_per_atom": (peak_mb - base_mb) * 1024 / len(atoms),
        "load_average": os.getloadavg()[0],
    }


def power_law(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares fit of log(value) = log(a) + b log(N); returns (a, b)."""
    import numpy as np

    b, log_a = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(np.exp(log_a)), float(b)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = np.array([r["atoms"] for r in results])
    cpu = np.array([r["cpu_ms"] for r in results])
    wall = np.array([r["wall_ms"] for r in results])
    a, b = power_law(list(n), list(cpu))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.loglog(n, cpu, "o-", label="CPU time (user + system)")
    ax1.loglog(n, wall, "s--", alpha=0.6, label="wall time (shared machine)")
    ax1.loglog(n, a * n**b, "k:", label=f"fit: {a:.3g} ms x N^{b:.3f}")
    ax1.set_xlabel("atoms")
    ax1.set_ylabel("ms per energy + forces")
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    ax2.semilogx(n, 1e3 * cpu / n, "o-", label="CPU µs per atom")
    ax2.set_xlabel("atoms")
    ax2.set_ylabel("µs per atom per step")
    ax2.set_ylim(bottom=0)
    ax3 = ax2.twinx()
    ax3.semilogx(n, [r["kb_per_atom"] for r in results], "^-", color="tab:red", label="kB per atom (peak)")
    ax3.set_ylabel("peak memory, kB per atom", color="tab:red")
    ax3.set_ylim(bottom=0)
    ax2.legend(loc="lower left")
    ax3.legend(loc="lower right")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=str(REPO / "inputs" / "water" / "water_model.pt"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-atoms", type=int, default=100_000)
    p.add_argument("--memory-fraction", type=float, default=0.6,
                   help="largest share of the available memory one size may take (predicted)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "scaling.json"))
    p.add_argument("--png", default=str(REPO / "benchmarks" / "scaling.png"))
    p.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)  # internal: one size, JSON on stdout
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:
        print(json.dumps(measure_one(args.model, tuple(args.one), args.threads, args.steps)))
        return

    import torch

    results: list[dict] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    print(f"model {args.model}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'atoms':>8}{'wall ms':>10}{'CPU ms':>10}{'µs/atom':>9}{'peak MB':>9}{'kB/atom':>9}{'load':>6}")
    for rep in REPLICAS:
        n = 192 * rep[0] * rep[1] * rep[2]
        if n > args.max_atoms:
            break
        if results:
            predicted = results[-1]["base_mb"] + results[-1]["kb_per_atom"] * n / 1024
            if predicted > args.memory_fraction * (memory_available_mb() + results[-1]["base_mb"]):
                print(f"stopping before {n} atoms: ~{predicted / 1024:.1f} GB predicted, "
                      f"{memory_available_mb() / 1024:.1f} GB available")
                break
        steps = max(3, min(20, 200_000 // n))
        cmd = [sys.executable, __file__, args.model, "--threads", str(args.threads), "--one", *map(str, rep),
               "--steps", str(steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{n} atoms failed:\n{out.stderr[-2000:]}")
            break
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['atoms']:>8}{r['wall_ms']:>10.1f}{r['cpu_ms']:>10.1f}{1e3 * r['cpu_ms'] / n:>9.1f}"
              f"{r['peak_mb']:>9.0f}{r['kb_per_atom']:>9.1f}{r['load_average']:>6.1f}", flush=True)
    if len(results) < 2:
        return
    sizes = [r["atoms"] for r in results]
    a, b = power_law(sizes, [r["cpu_ms"] for r in results])
    big = [r for r in results if r["atoms"] >= 3000]
    slope_big = power_law([r["atoms"] for r in big], [r["cpu_ms"] for r in big])[1] if len(big) >= 2 else None
    print(f"CPU time ~ {a:.3g} ms x N^{b:.3f} over {sizes[0]}-{sizes[-1]} atoms"
          + (f"; N^{slope_big:.3f} from 3,000 atoms up" if slope_big is not None else ""))
    summary = {
        "model": str(args.model),
        "threads": args.threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "fit_cpu_ms": {"prefactor": a, "exponent": b, "exponent_from_3000_atoms": slope_big},
        "results": results,
    }
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    title = (f"{Path(args.model).name}: energy + forces through the ASE calculator, {args.threads} thread(s), "
             f"liquid water (CPU time ~ N^{b:.3f})")
    plot(results, Path(args.png), title)
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
