"""Allocator settings against CPU time per MD step and peak memory (issue 20 part 5).

    OMP_NUM_THREADS=1 python benchmarks/alloc_memory.py [--engines lammps ase] [--replicas "1 1 1" "2 2 1"]
        [--variants glibc mallopt thp cache jemalloc] [--rounds 2] [--steps 2 8]
    OMP_NUM_THREADS=1 python benchmarks/alloc_memory.py --engines lammps --replicas "4 2 2" --steps 2 \
        --variants cache mallopt jemalloc          # memory only (one run: no CPU-per-step difference)

Liquid water, inputs/lammps/water_3000.data (3,072 atoms) replicated ("2 2 1" = 12,288 atoms), the bundled
model, one thread. LAMMPS: `lmp -in inputs/lammps/in.water_nvt` on one rank; ASE: MLMDCalculator under ASE's
VelocityVerlet in a fresh process. Every configuration runs twice (the two --steps counts); CPU s per step
(user + system of that process, from wait4) is the difference over the extra steps, so start-up cancels.
Peak memory is the longer run's peak RSS (whole process, torch and Python included), per atom.
Variants (environment of the measured process):
  glibc     MLMD_KEEP_MEMORY=0: malloc left alone
  mallopt   MLMD_KEEP_MEMORY=mallopt: glibc never unmaps or trims (the engines' setting before the allocator)
  thp       MLMD_KEEP_MEMORY=0 THP_MEM_ALLOC_ENABLE=1 (torch's own huge-page setting)
  cache     MLMD_KEEP_MEMORY=1: mlmd's caching allocator (plugins/lammps/mlmd_alloc.cpp), the default
  jemalloc  MLMD_KEEP_MEMORY=0, LD_PRELOAD=libjemalloc.so.2, MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
            (only if Debian's libjemalloc2 is installed; mlmd does not need it)
Variants are interleaved round by round, in a rotated order (the machine is shared). Rows are appended to
benchmarks/data/alloc_memory.jsonl with the load average at the time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "inputs" / "lammps" / "water_3000.data"
MODEL = REPO / "inputs" / "water" / "water_model.pt"
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
OUT = REPO / "benchmarks" / "data" / "alloc_memory.jsonl"


def variant_env(name: str) -> dict[str, str] | None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("THP_MEM_ALLOC_ENABLE", "LD_PRELOAD", "MALLOC_CONF"):
        env.pop(k, None)
    if name == "glibc":
        env["MLMD_KEEP_MEMORY"] = "0"
    elif name == "mallopt":
        env["MLMD_KEEP_MEMORY"] = "mallopt"
    elif name == "thp":
        env.update(MLMD_KEEP_MEMORY="0", THP_MEM_ALLOC_ENABLE="1")
    elif name == "cache":
        env["MLMD_KEEP_MEMORY"] = "1"
    elif name == "jemalloc":
        if not JEMALLOC.is_file():
            return None
        env.update(MLMD_KEEP_MEMORY="0", LD_PRELOAD=str(JEMALLOC), MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1")
    else:
        raise ValueError(name)
    return env


def measure(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS (MB) of one process."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode()[-3000:]}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def atoms(replicate: str) -> int:
    nx, ny, nz = (int(r) for r in replicate.split())
    return 3072 * nx * ny * nz


def command(engine: str, replicate: str, steps: int) -> list[str]:
    if engine == "lammps":
        from mlmd.engines.lammps import lmp_command

        return [*lmp_command(), "-in", str(REPO / "inputs" / "lammps" / "in.water_nvt"), "-log", "none",
                "-var", "replicate", replicate, "-var", "steps", str(steps), "-var", "thermo", str(steps),
                "-var", "data", str(DATA), "-var", "model", str(MODEL)]
    return [sys.executable, __file__, "--worker", replicate, str(steps)]


def ase_worker(replicate: str, steps: int) -> None:
    """The measured ASE process: VelocityVerlet for `steps` steps (plus one force call to start)."""
    import ase.io
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from mlmd.engines.ase import MLMDCalculator

    water = ase.io.read(DATA, format="lammps-data", atom_style="atomic", Z_of_type={1: 1, 2: 8})
    water = water.repeat(tuple(int(r) for r in replicate.split()))
    water.calc = MLMDCalculator(MODEL)
    MaxwellBoltzmannDistribution(water, temperature_K=300, rng=np.random.default_rng(0))
    VelocityVerlet(water, 0.5 * units.fs).run(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["lammps", "ase"])
    ap.add_argument("--replicas", nargs="+", default=["1 1 1", "2 2 1"])
    ap.add_argument("--variants", nargs="+", default=["glibc", "mallopt", "thp", "cache", "jemalloc"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 8], help="two counts (CPU per step), or one (memory)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        ase_worker(args.worker[0], int(args.worker[1]))
        return
    variants = [v for v in args.variants if variant_env(v) is not None]
    skipped = sorted(set(args.variants) - set(variants))
    if skipped:
        print(f"skipped (not installed): {' '.join(skipped)}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for replicate in args.replicas:
                n_atoms = atoms(replicate)
                for engine in args.engines:
                    for v in order:
                        env = variant_env(v)
                        assert env is not None
                        load = os.getloadavg()[0]
                        runs = [measure(command(engine, replicate, s), env, work) for s in args.steps]
                        row = {"engine": engine, "atoms": n_atoms, "variant": v, "round": r, "load": round(load, 2),
                               "steps": args.steps, "cpu_s": [round(c, 3) for c, _ in runs],
                               "peak_mb": round(runs[-1][1], 1), "mb_per_atom": round(runs[-1][1] / n_atoms, 4),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                        if len(runs) == 2:
                            row["cpu_per_step"] = round((runs[1][0] - runs[0][0]) / (args.steps[1] - args.steps[0]), 4)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
                        OUT.parent.mkdir(parents=True, exist_ok=True)
                        with OUT.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    print("\n| engine | atoms | variant | CPU s/step (median of rounds) | peak MB/atom (max) | load |")
    print("|---|---:|---|---:|---:|---:|")
    for engine in args.engines:
        for replicate in args.replicas:
            for v in variants:
                sel = [x for x in rows if (x["engine"], x["variant"], x["atoms"]) == (engine, v, atoms(replicate))]
                if not sel:
                    continue
                cpu = statistics.median(x["cpu_per_step"] for x in sel) if "cpu_per_step" in sel[0] else float("nan")
                print(f"| {engine} | {sel[0]['atoms']:,} | {v} | {cpu:.3f} | {max(x['mb_per_atom'] for x in sel):.3f} "
                      f"| {min(x['load'] for x in sel):.1f}-{max(x['load'] for x in sel):.1f} |")


if __name__ == "__main__":
    main()
