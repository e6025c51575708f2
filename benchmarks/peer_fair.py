"""The side-by-side MD speed run: every code through its fastest CPU route, under the same allocator, interleaved.

    python benchmarks/peers.py models          # the models timed below (untrained peers are fine: see below)
    python benchmarks/peers.py fair            # 192 / 1,536 / 12,288 water atoms, 3 rounds, both allocators
    python benchmarks/peers.py fair --replicas 1 --rounds 1 --routes "mlmd OpenMM"      # a smoke test
    python benchmarks/peers.py models fair --threads 2 --allocators keep   # every process on 2 threads

Each measurement is a fresh process (benchmarks/peer_worker.py) on one thread (--threads N: N torch/OpenMP threads
in every process, one LAMMPS rank); its CPU time per MD step is what the step costs the cores whatever else runs,
and its wall time per step is kept beside it. Within a size the rounds cycle through every (allocator, route) pair,
the order rotated each round, so that a change of the machine's load reaches every code alike; a route's figure
is its minimum over the rounds' processes. Every record carries `uptime`'s line from just before it ran.

Allocators, applied to every process alike (peer_worker.py --allocator): `keep`, mlmd's keep-memory mallopt
(mlmd/engines/allocator.py) that mlmd's engines and LAMMPS plugin apply as shipped, and `glibc`, malloc left
alone for everyone (MLMD_KEEP_MEMORY=0 for mlmd).

Models, sized like mlmd's bundled one (r_cut 5 Å, 2 layers, l_max 1, 32 scalar channels): mlmd's bundled water
model repackaged with its AOTInductor copy; NequIP (benchmarks/peer_configs/nequip.yaml) and MACE (peers.py's
MACE_ARGS) from their trained runs in runs/peers/ when there, else from a one-epoch run of the same recipe: the
cost of a step does not depend on the weights. NequIP through `nequip-compile --mode aotinductor` compiled for
the thread count it runs with, and through TorchScript. nequip-compile has no option for the thread count: it leaves
Inductor's cpp.threads at -1, which generates `#pragma omp parallel num_threads(K)` loops with K =
torch.get_num_threads() of the compiling process, so the compiler runs with OMP_NUM_THREADS=N (and, N > 1,
its own Inductor cache: peers.env_for). mlmd's AOTInductor
copy is compiled for N threads too (`mlmd package --compile aoti --compile-threads N`; 1: no OpenMP loops). MACE
through its eager model, its TorchScript copy and torch.compile (peer_worker.MACE_ROUTES), compiled in the timed
process, on its threads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

ROUTES = {  # name: (peer, worker command, extra worker args, model key)
    "mlmd LAMMPS, TorchScript": ("mlmd", "lammps", ["--compiled", "0"], "mlmd"),
    "mlmd LAMMPS, compiled (AOTI)": ("mlmd", "lammps", ["--compiled", "1"], "mlmd"),
    "mlmd OpenMM": ("mlmd", "openmm", [], "mlmd"),  # openmm-torch runs the TorchScript file
    # the peers' engine: ASE's velocity Verlet and a Python-side neighbour list, around the compiled copy
    "mlmd ASE, compiled (AOTI)": ("mlmd", "ase", [], "mlmd"),
    "NequIP, AOTInductor": ("nequip", "ase", [], "nequip_aoti"),
    "NequIP, TorchScript": ("nequip", "ase", [], "nequip_ts"),
    "MACE, eager": ("mace", "ase", ["--mace-route", "eager"], "mace"),
    "MACE, TorchScript": ("mace", "ase", ["--mace-route", "torchscript"], "mace_ts"),
    "MACE, torch.compile": ("mace", "ase", ["--mace-route", "compile"], "mace"),
}
ALLOCATORS = ("keep", "glibc")
# warm-up and timed steps per size: a few seconds of stepping for the slowest route
STEPS = {192: (5, 30), 1536: (3, 8), 12288: (1, 2)}


def model_paths(runs: Path, threads: int = 1) -> dict[str, Path]:
    """The files timed with `threads` threads per process: the AOTInductor programs (mlmd's, NequIP's) are compiled
    for that thread count, one file each; the TorchScript and MACE files serve every thread count."""
    m = runs / "models"
    mlmd = "mlmd_water.pt" if threads == 1 else f"mlmd_water_t{threads}.pt"
    return {"mlmd": m / mlmd, "nequip_aoti": m / f"nequip_t{threads}.nequip.pt2",
            "nequip_ts": m / "nequip.nequip.pth", "mace": m / "mace.model", "mace_ts": m / "mace_compiled.model"}


def prepare_models(repo: Path, runs: Path, py: str, env_for: Callable[..., dict[str, str]],
                   train_cmd: Callable[[str, int], tuple[list[str], Path]], threads: int = 1) -> None:
    """The files model_paths(runs, threads) names; those already there are kept."""
    paths = model_paths(runs, threads)
    paths["mlmd"].parent.mkdir(parents=True, exist_ok=True)

    def run(peer: str, cmd: list[str], cwd: Path = repo, **env: str) -> None:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=cwd, env={**env_for(peer, threads), **env}, check=True)

    if not paths["mlmd"].is_file():
        threads_arg = [] if threads == 1 else ["--compile-threads", str(threads)]
        run("mlmd", [py, "-m", "mlmd.cli", "package", str(repo / "inputs/water/water_model.pt"), "-o",
                     str(paths["mlmd"]), "--compile", "aoti", *threads_arg, "--no-validate"])
    ckpt = runs / "nequip" / "best.ckpt"
    if not ckpt.is_file():  # one short epoch of the recipe: a model of the benchmark's size
        cmd, cwd = train_cmd("nequip", 1)
        run("nequip", [*cmd, "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=1"], cwd)
    nequip_compile = str(repo / "benchmarks" / ".peers" / "nequip" / "bin" / "nequip-compile")
    for key, mode in (("nequip_aoti", "aotinductor"), ("nequip_ts", "torchscript")):
        if not paths[key].is_file():  # AOTInductor's kernels are generated for the thread count of the compiler
            run("nequip", [py, nequip_compile, str(ckpt), str(paths[key]), "--mode", mode, "--device", "cpu",
                           "--target", "ase"], OMP_NUM_THREADS=str(threads))
    if not paths["mace"].is_file():
        trained = runs / "mace" / "water_mace_stagetwo.model"
        if not trained.is_file():
            cmd, cwd = train_cmd("mace", 1)
            cmd = [c for c in cmd if c != "--swa"]  # one epoch: no second stage
            run("mace", cmd, cwd)
            trained = runs / "mace" / "water_mace.model"
        shutil.copy(trained, paths["mace"])
        shutil.copy(trained.with_name(trained.stem + "_compiled.model"), paths["mace_ts"])


def count_parameters(runs: Path, py: str, env_for: Callable[[str], dict[str, str]], threads: int = 1
                     ) -> dict[str, int]:
    p = model_paths(runs, threads)
    code = {
        "mlmd": f"from mlmd.deploy.load import load_model; m, _ = load_model({str(p['mlmd'])!r})",
        "nequip": f"import torch; m = torch.jit.load({str(p['nequip_ts'])!r})",
        "mace": f"import torch; m = torch.load({str(p['mace'])!r}, weights_only=False)",
    }
    out = {}
    for peer, load in code.items():
        r = subprocess.run([py, "-c", f"{load}\nprint(sum(x.numel() for x in m.parameters()))"],
                           env=env_for(peer), capture_output=True, text=True, check=True)
        out[peer] = int(r.stdout.split()[-1])
    return out


def records(path: Path) -> list[dict[str, Any]]:
    """The measurement lines of a data file (headers left out); none if there is no file."""
    if not path.is_file():
        return []
    return [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
            if not r.get("header")]


def budget_steps(recs: list[dict[str, Any]], routes: list[str], budget_s: float
                 ) -> dict[int, tuple[int, int]]:
    """(warm-up, timed steps) per size of STEPS: the timed steps that make the slowest of `routes` step about
    budget_s wall seconds, from its fastest earlier wall time per step at that size (any thread count: the slowest
    is what bounds the run); never fewer than STEPS gives, and STEPS where no route has a row."""
    out = {}
    for n, (warmup, steps) in STEPS.items():
        slowest = max((min(r["step_s"] for r in recs if r.get("route") == route and r.get("atoms") == n
                           and r.get("step_s", 0) > 0)
                       for route in routes if any(r.get("route") == route and r.get("atoms") == n
                                                  and r.get("step_s", 0) > 0 for r in recs)), default=None)
        out[n] = (warmup, steps if slowest is None else max(steps, int(budget_s / slowest)))
    return out


def uptime() -> str:
    r = subprocess.run(["uptime"], capture_output=True, text=True)
    return r.stdout.strip()


def order(round_no: int, routes: list[str], allocators: tuple[str, ...] = ALLOCATORS) -> list[tuple[str, str]]:
    """Every (allocator, route) pair once, rotated by the round so that no code always runs first or last."""
    pairs = [(a, r) for a in allocators for r in routes]
    k = (round_no * len(pairs)) // 3 % len(pairs) if pairs else 0
    return pairs[k:] + pairs[:k]


def run_fair(runs: Path, out: Path, worker: Callable[..., dict[str, Any]], box_file: Callable[[int], Path],
             routes: list[str], reps: list[int], rounds: int, threads: int = 1,
             allocators: tuple[str, ...] = ALLOCATORS, steps_for: dict[int, tuple[int, int]] | None = None,
             max_s: float | None = None, wait_policy: str = "PASSIVE") -> None:
    """Append one JSON line per process to `out`: sizes one after another, all rounds of a size together. threads:
    torch/OpenMP threads of every process (worker(peer, args, threads=..., wait_policy=...) sets its environment;
    wait_policy: OMP_WAIT_POLICY, recorded in rows of several threads); steps_for: (warm-up, timed steps) per size
    instead of STEPS; max_s: an ASE process stops its timed steps after that many wall seconds (the step counts come
    from earlier runs, whose speed this one need not have)."""
    paths = model_paths(runs, threads)
    steps_for = steps_for or STEPS
    for rep in reps:
        n = 192 * rep**3
        warmup, steps = steps_for.get(n, (1, 2))
        for k in range(rounds):
            for alloc, name in order(k, routes, allocators):
                peer, cmd, extra, key = ROUTES[name]
                rec: dict[str, Any] = {"route": name, "allocator": alloc, "atoms": n, "round": k,
                                       "threads": threads, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                       "uptime": uptime()}
                if threads > 1 or wait_policy != "PASSIVE":  # one-thread rows as before the option
                    rec["wait_policy"] = wait_policy
                t = time.perf_counter()
                args = [cmd, "--peer", peer, "--model", str(paths[key]), "--structure", str(box_file(rep)),
                        "--steps", str(steps), "--warmup", str(warmup), "--allocator", alloc, *extra]
                if max_s is not None and cmd == "ase":
                    args += ["--max-s", str(max_s)]
                # one thread: the worker's arguments and environment exactly as before the option existed
                rec.update(worker(peer, args) if threads == 1 and wait_policy == "PASSIVE" else
                           worker(peer, [*args, "--threads", str(threads)], threads=threads, wait_policy=wait_policy))
                rec["process_s"] = time.perf_counter() - t
                with open(out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                rate = f"{n / rec['step_cpu_s']:,.0f} atom-steps/CPU-s" if "step_cpu_s" in rec else rec.get("error")
                print(f"{n:>6} r{k} {alloc:5} {name:30} {rate}", flush=True)
