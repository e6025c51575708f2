"""Accuracy at an equal training budget against MD throughput: mlmd, NequIP and MACE trained on the same water
split under an equal CPU budget per model size, then timed through each code's fastest route (issue 20, part 4).

    python benchmarks/peers.py train --size bundled --cpu-budget 2 --models mlmd nequip
    python benchmarks/peers.py train --size large --cpu-budget 4
    python benchmarks/peers.py evaluate --size large --cpu-budget 4
    python benchmarks/peers.py trained-speed --budgets bundled=2 large=4
    python benchmarks/peers.py train evaluate --size bundled --cpu-budget 8          # a longer budget, same size
    python benchmarks/peers.py trained-speed --budgets bundled=8
    python benchmarks/peers.py pareto --budgets bundled=2 large=4 bundled=8

A size may have several budgets: each (size, budget) is its own training folder, its own table row and plot point.

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


def parse_size_budgets(items: Sequence[str]) -> list[tuple[str, float]]:
    """[('bundled', 360.0), ('bundled', 720.0), ...] from ['bundled=6', 'bundled=12min']: a size may come with
    several budgets; repeats are dropped, the order kept."""
    out: list[tuple[str, float]] = []
    for item in items:
        size, sep, budget = item.partition("=")
        if not sep or size not in SIZES:
            raise ValueError(f"expected SIZE=BUDGET with SIZE among {', '.join(SIZES)}: {item!r}")
        if (size, parse_budget(budget)) not in out:
            out.append((size, parse_budget(budget)))
    return out


def budget_tag(budget_s: float) -> str:
    """'8min': how a budget appears in route labels."""
    return f"{budget_s / 60:g}min"


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


_MACE_STAGE_TWO = "Changing loss based on Stage Two Weights"
_MACE_EPOCH_F = re.compile(r"INFO: Epoch (\d+): head: \S+, loss=\S+, \S+=\s*\S+ meV, (RMSE|MAE)_F=\s*([0-9.]+) meV")


def val_force_curve(peer: str, out: Path) -> tuple[str, list[float]]:
    """The validation force error after each epoch, in meV/Å, from each code's own log: mlmd's metrics.csv
    (MAE), NequIP's Lightning metrics.csv (val0_epoch/forces_mae, eV/Å), MACE's train.log (the error its
    table type logs: RMSE here; its stage two only, when it reached it). Returns (what the numbers are, the values
    in epoch order)."""
    import csv

    if peer == "mlmd":
        rows = list(csv.DictReader((out / "metrics.csv").open())) if (out / "metrics.csv").is_file() else []
        return "MAE", [float(r["val_forces_mae"]) for r in rows if r.get("val_forces_mae")]
    if peer == "nequip":
        per_epoch: dict[int, float] = {}
        for f in out.rglob("metrics.csv"):
            for row in csv.DictReader(f.open()):
                if row.get("epoch") and row.get("val0_epoch/forces_mae"):
                    per_epoch[int(row["epoch"])] = 1000 * float(row["val0_epoch/forces_mae"])
        return "MAE", [per_epoch[k] for k in sorted(per_epoch)]
    log = (out / "train.log").read_text(errors="replace") if (out / "train.log").is_file() else ""
    # stage two reweights the loss (energy x1000) and the force error jumps: its own epochs make its curve
    stage_two = log.find(_MACE_STAGE_TWO)
    found = {int(m.group(1)): (m.group(2), float(m.group(3))) for m in _MACE_EPOCH_F.finditer(log, max(stage_two, 0))}
    kind = next(iter(found.values()))[0] if found else "RMSE"
    return kind + (" (stage two)" if stage_two >= 0 else ""), [found[k][1] for k in sorted(found)]


def curve_summary(kind: str, values: Sequence[float], tail: float = 0.25, gain: float = 0.01) -> dict[str, Any]:
    """Whether a validation curve was still falling when the training ended: its best over the last `tail` of the
    epochs (at least two) is more than `gain` below its best before them. Also where its best epoch lies."""
    if len(values) < 3:
        return {"kind": kind, "values": list(values), "still_falling": None}
    k = max(2, round(tail * len(values)))
    before, last = min(values[:-k]), min(values[-k:])
    best = min(range(len(values)), key=values.__getitem__)
    return {"kind": kind, "values": list(values), "epochs": len(values), "best_epoch": best + 1,
            "best": values[best], "last": values[-1], "tail_epochs": k, "tail_change": last / before - 1,
            "peak_after_best": max(values[best:]) / values[best],  # > 1.5: the training diverged after its best
            "still_falling": last < (1 - gain) * before}


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
Models = dict[tuple[str, float], dict[str, Path]]  # (size, budget_s) -> {peer: the file its fastest route runs}
SPEED_DATA = "converge_speed.jsonl"  # in benchmarks/data/
NAMES = {"mlmd": "mlmd", "nequip": "NequIP", "mace": "MACE"}


def speed_entries(models: Models) -> list[tuple[str, str, str, list[str], Path, str, float]]:
    """(label, peer, worker command, extra args, model, size, budget_s) per timed route of each trained model;
    a peer's file: mlmd packaged .pt with its .aoti.pt2, NequIP .nequip.pt2, MACE .model. The label names the
    budget, so several budgets of one size can be timed in one run."""
    routes = {"mlmd": [("LAMMPS compiled", "lammps", ["--compiled", "1"]), ("ASE compiled", "ase", [])],
              "nequip": [("AOTInductor", "ase", [])], "mace": [("torch.compile", "ase", ["--mace-route", "compile"])]}
    out = []
    for (size, budget_s), m in models.items():
        for peer in ("mlmd", "nequip", "mace"):
            for name, cmd, extra in routes[peer] if peer in m else []:
                out.append((f"{NAMES[peer]} {size} {budget_tag(budget_s)}, {name}", peer, cmd, extra, m[peer], size,
                            budget_s))
    return out


def run_speed(entries: list[tuple[str, str, str, list[str], Path, str, float]], atoms: list[int], rounds: int,
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
            for label, peer, cmd, extra, model, size, budget_s in entries[shift:] + entries[:shift]:
                rec: dict[str, Any] = {"route": label, "size": size, "budget_cpu_s": budget_s, "atoms": n, "round": k,
                                       "allocator": "keep", "threads": 1, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                       "uptime": uptime()}
                rec.update(worker(peer, [cmd, "--peer", peer, "--model", str(model), "--structure",
                                         str(box_file(rep)), "--steps", str(nsteps), "--warmup", str(warmup),
                                         "--allocator", "keep", *extra]))
                with open(out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                rate = f"{n / rec['step_cpu_s']:,.0f} atom-steps/CPU-s" if "step_cpu_s" in rec else rec.get("error")
                print(f"{n:>6} r{k} {label:36} {rate}", flush=True)


def best_rates(lines: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Each (route, atoms)'s best atom-steps per CPU-second over its processes."""
    best: dict[tuple[str, int], float] = {}
    for r in lines:
        if "step_cpu_s" in r and r["step_cpu_s"] > 0:
            key = (r["route"], int(r["atoms"]))
            best[key] = max(best.get(key, 0.0), r["atoms"] / r["step_cpu_s"])
    return best


def model_rates(lines: list[dict[str, Any]]) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(peer, size, budget_s) -> {'run': its header's time, 'atoms': {n: {route: best atom-steps/CPU-s}}}, from
    the lines of the speed data file in order (headers included). Each model's figures come from the last run that
    timed it, never mixed across runs (the load differs). Lines of runs before budgets were named in the labels
    ('mlmd bundled, ASE compiled') take their budget from their header's {size: budget} map."""
    runs: dict[tuple[str, str, float], dict[str, list[dict[str, Any]]]] = {}
    head: dict[str, Any] = {}
    for r in lines:
        if r.get("header"):
            head = r
            continue
        size = r.get("size") or r["route"].split(",")[0].split()[1]
        budget = r.get("budget_cpu_s")
        if budget is None:
            old = head.get("budgets", {})
            budget = old.get(size) if isinstance(old, dict) else None
        if budget is None or "peer" not in r:
            continue
        runs.setdefault((r["peer"], size, float(budget)), {}).setdefault(head.get("time", "?"), []).append(r)
    out = {}
    for key, by_run in runs.items():
        run = max(by_run)
        atoms: dict[str, dict[str, float]] = {}
        for (route, n), v in best_rates(by_run[run]).items():
            atoms.setdefault(str(n), {})[route.split(", ", 1)[1]] = v
        if atoms:
            out[key] = {"run": run, "atoms": atoms}
    return out


def speed_models(p: Any, size: str, budget_s: float, peers: Sequence[str] = ("mlmd", "nequip", "mace")
                 ) -> dict[str, Path]:
    """Each trained model of `peers` in the form its fastest route runs (made once, kept): mlmd packaged with its
    AOTInductor copy, NequIP through nequip-compile's AOTInductor for one thread, MACE's own stage-two model."""
    base = run_dir(p.RUNS, size, budget_s)
    models = {"mlmd": base / "speed" / "mlmd.pt", "nequip": base / "speed" / "nequip_t1.nequip.pt2",
              "mace": p.model_path("mace", base / "mace")}
    models = {k: v for k, v in models.items() if k in peers}
    if "mace" in models and not models["mace"].is_file():  # the probe's model: same network, same cost per step
        models["mace"] = base.parent / f"mace-probe-{size}" / "water_mace.model"
        print(f"MACE {size}: timed through {models['mace']} (its budget training has not ended)", flush=True)
    (base / "speed").mkdir(exist_ok=True)
    if "mlmd" in models and not models["mlmd"].is_file():
        subprocess.run([p.PY, "-m", "mlmd.cli", "package", str(base / "mlmd"), "-o", str(models["mlmd"]),
                        "--compile", "aoti", "--no-validate"], cwd=p.REPO, env=p.env_for("mlmd"), check=True)
    # AOTInductor's kernels are generated for the compiler's thread count (one: env_for)
    if "nequip" in models and not models["nequip"].is_file():
        subprocess.run([p.PY, p.peer_bin("nequip", "nequip-compile"), str(base / "nequip" / "best.ckpt"),
                        str(models["nequip"]), "--mode", "aotinductor", "--device", "cpu", "--target", "ase"],
                       cwd=p.REPO, env=p.env_for("nequip"), check=True)
    return models


def trained_speed(p: Any, budgets: list[tuple[str, float]], atoms: list[int], rounds: int,
                  peers: Sequence[str] = ("mlmd", "nequip", "mace")) -> None:
    from peer_fair import STEPS, uptime

    models = {(size, b): speed_models(p, size, b, peers) for size, b in budgets}
    out = p.BENCH / "data" / SPEED_DATA
    with open(out, "a") as fh:
        fh.write(json.dumps({"header": True, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": p.machine(),
                             "budgets": [[s, b] for s, b in budgets],
                             "models": {f"{s} {budget_tag(b)}": {k: str(v.relative_to(p.REPO)) for k, v in m.items()}
                                        for (s, b), m in models.items()},
                             "uptime": uptime()}) + "\n")
    run_speed(speed_entries(models), atoms, rounds, p.box_file, p.worker, out, STEPS)
