"""Accuracy at an equal training budget against MD throughput: mlmd, NequIP and MACE trained on the same water
split under an equal CPU budget per model size, then timed through each code's fastest route (issue 20, part 4).

    python benchmarks/peers.py train --size bundled --cpu-budget 2 --models mlmd nequip
    python benchmarks/peers.py train --size large --cpu-budget 4
    python benchmarks/peers.py evaluate --size large --cpu-budget 4
    python benchmarks/peers.py trained-speed --budgets bundled=2 large=4
    python benchmarks/peers.py pareto --budgets bundled=2 large=4

Sizes (SIZES below): `bundled` is the size of mlmd's bundled water model and of the earlier peer runs (r_cut 5 Å,
2 layers, l_max 1, 32 scalar channels); `large` doubles every code's channels (2x the width of each linear
layer: about 4x its cost), nothing else changed.

Budget: the CPU time (user + system, all processes of the training) of one training on one thread. mlmd and NequIP
checkpoint their best validation weights every epoch, so they are stopped (SIGINT) when the budget is spent, or stop
earlier by their own early stopping. MACE writes its model only at the end of its two stages (stage two: the last
quarter of the epochs), so its epoch count is chosen to fit the budget from a one-epoch probe of the same recipe
(the probe's CPU time is not counted as training).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

# each code's extra arguments per size, and what the size is, in that code's terms
SIZES: dict[str, dict[str, tuple[list[str], str]]] = {
    "bundled": {
        "mlmd": ([], "32x0e + 16x1o, l_max 1, 2 layers, radial MLP 32 (inputs/water/train.yaml)"),
        "nequip": ([], "32x0e + 16x1o, l_max 1, 2 layers, radial MLP 2 x 32 (peer_configs/nequip.yaml)"),
        "mace": ([], "32x0e + 32x1o, max_L 1, correlation 3, 2 layers (peers.MACE_ARGS)"),
    },
    "large": {
        "mlmd": (["--set", "model.channels=64", "--set", "model.vector_channels=32"],
                 "64x0e + 32x1o, otherwise bundled"),
        "nequip": (["training_module.model.num_features=[64,32]"], "64x0e + 32x1o, otherwise bundled"),
        "mace": (["--num_channels", "64"], "64x0e + 64x1o, otherwise bundled"),
    },
}


def parse_budget(text: str) -> float:
    """A CPU budget in seconds from '6' (minutes), '6min', '90s' or '1.5h'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|min|m|h)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a CPU budget: {text!r} (e.g. 6, 6min, 90s, 1.5h)")
    return float(m.group(1)) * {"s": 1, "min": 60, "m": 60, "h": 3600, None: 60}[m.group(2)]


def parse_size_budgets(items: Sequence[str]) -> dict[str, float]:
    """{'bundled': 360.0, ...} from ['bundled=6', 'large=12min']."""
    out = {}
    for item in items:
        size, sep, budget = item.partition("=")
        if not sep or size not in SIZES:
            raise ValueError(f"expected SIZE=BUDGET with SIZE among {', '.join(SIZES)}: {item!r}")
        out[size] = parse_budget(budget)
    return out


def run_dir(runs: Path, size: str, budget_s: float) -> Path:
    return runs / "converge" / f"{size}-{budget_s / 60:g}cpumin"


# ----------------------------------------------------------------------------------------------- the budget
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its children already waited for)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2 :].split()  # the name may hold spaces: fields after it from 'state'
    ticks = sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    return int(f[1]), ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """CPU seconds of a process and all its descendants: each live process's own time plus that of the children it
    has reaped (which no longer appear in /proc), so nothing is counted twice."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = s
    todo, total, seen = [root], 0.0, set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total


def run_with_budget(cmd: list[str], log: Path, cwd: Path, env: dict[str, str], budget_s: float | None,
                    poll_s: float = 2.0, grace_s: float = 120.0) -> dict[str, Any]:
    """Run `/usr/bin/time -v cmd` into log; past budget_s CPU seconds the training gets SIGINT (a checkpointing
    trainer ends cleanly or leaves its last checkpoint), SIGKILL grace_s later. Returns how it ended."""
    with open(log, "w") as fh:
        # SIGINT back to its default: a shell's background job inherits it ignored, and Python then never
        # installs its KeyboardInterrupt handler
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, stdout=fh,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        stopped_at = None
        while proc.poll() is None:
            time.sleep(poll_s)
            if budget_s is None or stopped_at is not None:
                if stopped_at is not None and time.time() - stopped_at > grace_s:
                    _signal_children(proc.pid, signal.SIGKILL)
                continue
            if tree_cpu_s(proc.pid) >= budget_s:
                stopped_at = time.time()
                _signal_children(proc.pid, signal.SIGINT)
        return {"stopped_by_budget": stopped_at is not None, "returncode": proc.returncode}


def _signal_children(pid: int, sig: int) -> None:
    for entry in Path("/proc").iterdir():  # the training itself: /usr/bin/time's child
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None and s[0] == pid:
            try:
                os.kill(int(entry.name), sig)
            except ProcessLookupError:
                pass


# ----------------------------------------------------------------------------------------------- MACE's epochs
_MACE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) INFO: (.*)$", re.M)


def mace_epochs_for_budget(probe_log: str, probe_cpu_s: float, probe_wall_s: float, budget_s: float) -> dict:
    """Epochs of MACE's recipe that fit budget_s CPU seconds, from a probe run of one epoch: the wall time between
    its last two evaluation lines ('Initial', 'Epoch 0': one epoch of training and its validation), scaled by the
    probe's CPU/wall ratio, is one epoch's CPU; the rest of the probe (imports, statistics, the initial and the
    final evaluation, saving) is paid once."""
    stamps = [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S.%f"), msg) for t, msg in _MACE_LINE.findall(probe_log)]
    evals = [t for t, msg in stamps if re.match(r"(Initial|Epoch \d+):", msg)]
    if len(evals) < 2:
        raise ValueError("the probe log has fewer than two evaluation lines")
    epoch_cpu = (evals[-1] - evals[-2]).total_seconds() * probe_cpu_s / probe_wall_s
    fixed_cpu = max(0.0, probe_cpu_s - (len(evals) - 1) * epoch_cpu)
    n = int((budget_s - fixed_cpu) // epoch_cpu)
    return {"epochs": max(4, n), "epoch_cpu_s": epoch_cpu, "fixed_cpu_s": fixed_cpu}


# ----------------------------------------------------------------------------------------------- training
UNBOUNDED_EPOCHS = 100_000  # mlmd and NequIP: the budget or early stopping ends them


def epochs_done(peer: str, out: Path) -> int | None:
    """Epochs completed, from each code's own per-epoch log (MACE: None, its count is chosen beforehand)."""
    import csv

    if peer == "mlmd" and (out / "metrics.csv").is_file():
        return len(list(csv.DictReader((out / "metrics.csv").open())))
    if peer == "nequip":
        val = set()
        for f in out.rglob("metrics.csv"):
            for row in csv.DictReader(f.open()):
                if row.get("epoch") and any(k.startswith("val0_epoch") and v for k, v in row.items()):
                    val.add(int(row["epoch"]))
        return len(val)
    return None


def train_budget(p: Any, peers: list[str], size: str, budget_s: float) -> None:
    """Train each peer of `peers` at `size` under budget_s CPU seconds into run_dir(...)/PEER (p: the peers
    module, for its commands and helpers). A model already trained (its record written) is kept."""
    base = run_dir(p.RUNS, size, budget_s)
    for peer in peers:
        out, record = base / peer, base / f"train_{peer}.json"
        if record.is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        log, ended = out / "train.log", out / "ended.json"
        extra: dict[str, Any] = {}
        if peer == "mace":  # the epoch count that fits the budget, from a one-epoch probe (stage one only)
            probe = base.parent / f"mace-probe-{size}"  # the same for every budget
            probe.mkdir(parents=True, exist_ok=True)
            if p.time_v(probe / "train.log") is None:
                cmd, _ = p.train_commands("mace", 1, size, probe)
                run_with_budget([c for c in cmd if c != "--swa"], probe / "train.log", probe, p.env_for("mace"),
                                None)
            t = p.time_v(probe / "train.log")
            extra = mace_epochs_for_budget((probe / "train.log").read_text(), t["cpu_s"], t["wall_s"], budget_s)
            extra["probe_cpu_s"] = t["cpu_s"]
        epochs = extra.pop("epochs", UNBOUNDED_EPOCHS)
        cmd, cwd = p.train_commands(peer, epochs, size, out, converge=True)
        if not ended.is_file():
            print(f"training {peer} {size} under {budget_s / 60:g} CPU-min: log in {log}", flush=True)
            res = run_with_budget(cmd, log, cwd, p.env_for(peer), None if peer == "mace" else budget_s)
            ended.write_text(json.dumps(res))
        res = json.loads(ended.read_text())
        done = p.time_v(log)
        if done is None or (done["exit"] != 0 and not res["stopped_by_budget"]):
            raise RuntimeError(f"training {peer} failed: see {log}")
        p.finish_model(peer, out)
        done.update(peer=peer, size=size, size_means=SIZES[size][peer][1], budget_cpu_s=budget_s,
                    stopped_by_budget=res["stopped_by_budget"], epochs=epochs_done(peer, out) or epochs,
                    parameters=p.count_parameters(peer, out), load_avg_after=os.getloadavg()[0], **extra,
                    command=" ".join(cmd[1:]).replace(str(p.REPO) + "/", ""))
        record.write_text(json.dumps(done, indent=1))
        print(f"{peer} {size}: {done['epochs']} epochs, {done['cpu_s'] / 60:.1f} min CPU "
              f"({done['wall_s'] / 60:.1f} wall), {done['parameters']} parameters", flush=True)


# ----------------------------------------------------------------------------------------------- MD speed
def speed_entries(models: dict[str, dict[str, Path]]) -> list[tuple[str, str, str, list[str], Path]]:
    """(label, peer, worker command, extra args, model) per timed route of each trained model; models maps size to
    {'mlmd': packaged .pt with its .aoti.pt2, 'nequip': .nequip.pt2, 'mace': .model}."""
    out = []
    for size, m in models.items():
        out += [(f"mlmd {size}, LAMMPS compiled", "mlmd", "lammps", ["--compiled", "1"], m["mlmd"]),
                (f"mlmd {size}, ASE compiled", "mlmd", "ase", [], m["mlmd"]),
                (f"NequIP {size}, AOTInductor", "nequip", "ase", [], m["nequip"]),
                (f"MACE {size}, torch.compile", "mace", "ase", ["--mace-route", "compile"], m["mace"])]
    return out


def run_speed(entries: list[tuple[str, str, str, list[str], Path]], atoms: list[int], rounds: int,
              box_file: Callable[[int], Path], worker: Callable[..., dict[str, Any]], out: Path,
              steps: dict[int, tuple[int, int]]) -> None:
    """Fresh processes, keep-memory allocator for all, the entries interleaved and rotated round by round; one JSON
    line per process appended to out."""
    from peer_fair import uptime

    for n in atoms:
        rep = round((n / 192) ** (1 / 3))
        warmup, nsteps = steps.get(n, (1, 2))
        for k in range(rounds):
            shift = (k * len(entries)) // max(rounds, 1) % len(entries)
            for label, peer, cmd, extra, model in entries[shift:] + entries[:shift]:
                rec: dict[str, Any] = {"route": label, "atoms": n, "round": k, "allocator": "keep", "threads": 1,
                                       "time": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime": uptime()}
                rec.update(worker(peer, [cmd, "--peer", peer, "--model", str(model), "--structure",
                                         str(box_file(rep)), "--steps", str(nsteps), "--warmup", str(warmup),
                                         "--allocator", "keep", *extra]))
                with open(out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                rate = f"{n / rec['step_cpu_s']:,.0f} atom-steps/CPU-s" if "step_cpu_s" in rec else rec.get("error")
                print(f"{n:>6} r{k} {label:32} {rate}", flush=True)


def best_rates(lines: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Each (route, atoms)'s best atom-steps per CPU-second over its processes."""
    best: dict[tuple[str, int], float] = {}
    for r in lines:
        if "step_cpu_s" in r and r["step_cpu_s"] > 0:
            key = (r["route"], int(r["atoms"]))
            best[key] = max(best.get(key, 0.0), r["atoms"] / r["step_cpu_s"])
    return best


SPEED_DATA = "converge_speed.jsonl"  # in benchmarks/data/


def speed_models(p: Any, size: str, budget_s: float, peers: Sequence[str] = ("mlmd", "nequip")) -> dict[str, Path]:
    """Each trained model in the form its fastest route runs (made once, kept): mlmd packaged with its
    AOTInductor copy, NequIP through nequip-compile's AOTInductor for one thread, MACE's own stage-two model."""
    base = run_dir(p.RUNS, size, budget_s)
    models = {"mlmd": base / "speed" / "mlmd.pt", "nequip": base / "speed" / "nequip_t1.nequip.pt2",
              "mace": p.model_path("mace", base / "mace")}
    if not models["mace"].is_file():  # the probe's model: same network and code, so the same cost per step
        models["mace"] = base.parent / f"mace-probe-{size}" / "water_mace.model"
        print(f"MACE {size}: timed through {models['mace']} (its budget training has not ended)", flush=True)
    models["mlmd"].parent.mkdir(exist_ok=True)
    if "mlmd" in peers and not models["mlmd"].is_file():
        subprocess.run([p.PY, "-m", "mlmd.cli", "package", str(base / "mlmd"), "-o", str(models["mlmd"]),
                        "--compile", "aoti", "--no-validate"], cwd=p.REPO, env=p.env_for("mlmd"), check=True)
    # AOTInductor's kernels are generated for the compiler's thread count (one: env_for)
    if "nequip" in peers and not models["nequip"].is_file():
        subprocess.run([p.PY, p.peer_bin("nequip", "nequip-compile"), str(base / "nequip" / "best.ckpt"),
                        str(models["nequip"]), "--mode", "aotinductor", "--device", "cpu", "--target", "ase"],
                       cwd=p.REPO, env=p.env_for("nequip"), check=True)
    return models


def trained_speed(p: Any, budgets: dict[str, float], atoms: list[int], rounds: int) -> None:
    from peer_fair import STEPS, uptime

    models = {size: speed_models(p, size, b) for size, b in budgets.items()}
    out = p.BENCH / "data" / SPEED_DATA
    with open(out, "a") as fh:
        fh.write(json.dumps({"header": True, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": p.machine(),
                             "budgets": budgets, "models": {s: {k: str(v.relative_to(p.REPO)) for k, v in m.items()}
                                                            for s, m in models.items()},
                             "uptime": uptime()}) + "\n")
    run_speed(speed_entries(models), atoms, rounds, p.box_file, p.worker, out, STEPS)
