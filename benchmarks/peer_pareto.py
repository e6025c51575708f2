"""Force error against MD throughput of the budget-trained models (peer_converge): benchmarks/data/converge.json,
benchmarks/pareto.png and the RESULTS.md section between the converge markers.

    python benchmarks/peers.py pareto --budgets bundled=2 large=4

Throughput of a model: atoms / (its least CPU seconds per MD step over the processes of
benchmarks/data/converge_speed.jsonl) at the largest box measured, through its code's fastest route there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

START, END = "<!-- converge:start -->", "<!-- converge:end -->"
NAMES = {"mlmd": "mlmd", "nequip": "NequIP", "mace": "MACE"}
ROUTE_PREFIX = {"mlmd": "mlmd {size}, ", "nequip": "NequIP {size}, ", "mace": "MACE {size}, "}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (error, throughput) that no other point beats: none has error <= and throughput >=
    with one of them strictly better. Sorted by throughput."""
    front = []
    for i, (e, t) in enumerate(points):
        beaten = any(e2 <= e and t2 >= t and (e2 < e or t2 > t) for j, (e2, t2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i][1])


def throughput_at_error(points: Sequence[tuple[float, float]], error: float) -> float | None:
    """The best throughput among points with error <= `error` (None when none reaches it)."""
    ok = [t for e, t in points if e <= error]
    return max(ok) if ok else None


def read_speed(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    heads, recs = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                (heads if r.get("header") else recs).append(r)
    return heads, recs


def collect(p: Any, budgets: dict[str, float]) -> list[dict[str, Any]]:
    """One row per code and size: training record, test errors, fastest route's throughput."""
    from peer_converge import SPEED_DATA, best_rates, run_dir

    _, recs = read_speed(p.BENCH / "data" / SPEED_DATA)
    rates = best_rates(recs)
    sizes_n = sorted({n for _, n in rates})
    rows = []
    for size, budget in budgets.items():
        base = run_dir(p.RUNS, size, budget)
        for peer in ("mlmd", "nequip", "mace"):
            tr, te = base / f"train_{peer}.json", base / f"test_{peer}.json"
            if not tr.is_file() or not te.is_file():
                continue
            row: dict[str, Any] = {"code": NAMES[peer], "peer": peer, "size": size, "budget_cpu_min": budget / 60,
                                   "train": json.loads(tr.read_text()), "test": json.loads(te.read_text())}
            prefix = ROUTE_PREFIX[peer].format(size=size)
            for n in sizes_n:
                got = {route: v for (route, m), v in rates.items() if m == n and route.startswith(prefix)}
                if got:
                    route = max(got, key=got.get)
                    row.setdefault("throughput", {})[str(n)] = {"route": route, "atom_steps_per_cpu_s": got[route],
                                                                "all_routes": got}
            rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]], n: str) -> list[str]:
    """For each peer model: mlmd's best throughput at an equal or lower force MAE, and the ratio."""
    mine = [(r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"]) for r in rows
            if r["peer"] == "mlmd" and n in r.get("throughput", {})]
    out = []
    for r in rows:
        if r["peer"] == "mlmd" or n not in r.get("throughput", {}):
            continue
        f, t = r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"]
        best = throughput_at_error(mine, f)
        if best is None:
            lowest = min(mine)[0] if mine else float("nan")
            out.append(f"{r['code']} {r['size']} (F MAE {f:.1f} meV/Å): no mlmd model reaches its force MAE "
                       f"(mlmd's lowest {lowest:.1f})")
        else:
            out.append(f"{r['code']} {r['size']} (F MAE {f:.1f} meV/Å, {t:,.0f} atom-steps/CPU-s): mlmd at equal "
                       f"or lower force MAE runs **{best / t:.2f}x** its throughput")
    return out


def plot(rows: list[dict[str, Any]], n: str, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"mlmd": "tab:blue", "nequip": "tab:orange", "mace": "tab:green"}
    marks = {"bundled": "o", "large": "s"}
    pts = [(r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r, (f, t) in zip(rows, pts):
        ax.scatter(t, f, color=colors[r["peer"]], marker=marks.get(r["size"], "^"), s=60, zorder=3,
                   label=f"{r['code']} {r['size']} ({r['train']['parameters']:,} par.)")
        ax.annotate(f"{r['code']} {r['size']}", (t, f), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto_front(pts)
    # the front as a staircase: no model sits below and right of it
    xs, ys = [], []
    for i in front:
        f, t = pts[i]
        if xs:
            xs.append(xs[-1])
            ys.append(f)
        xs.append(t)
        ys.append(f)
    ax.plot(xs[::-1], ys[::-1], "k--", lw=1, zorder=2, label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"MD throughput, atom-steps per CPU-second ({int(n):,} water atoms, 1 thread)")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_title("Water (GFN2-xTB): accuracy at an equal CPU budget against MD speed", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def section(p: Any, rows: list[dict[str, Any]], n: str, budgets: dict[str, float]) -> str:
    from peer_converge import SIZES, SPEED_DATA

    heads, recs = read_speed(p.BENCH / "data" / SPEED_DATA)
    tl = [r["train"]["load_avg_after"] for r in rows if "load_avg_after" in r["train"]]
    loads = [float(r["uptime"].split("load average:")[1].split(",")[0]) for r in recs if "uptime" in r]
    when = sorted(r["time"] for r in recs)
    budget_txt = ", ".join(f"{s} {b / 60:g} CPU-min" for s, b in budgets.items())
    lines = [START, "## Accuracy at an equal CPU budget against MD throughput (the Pareto front)", "",
             f"Written by `python benchmarks/peers.py pareto --budgets "
             f"{' '.join(f'{s}={b / 60:g}' for s, b in budgets.items())}` on {time.strftime('%Y-%m-%d')}; data "
             f"`benchmarks/data/converge.json`, plot `benchmarks/pareto.png`. Trained by `python benchmarks/peers.py "
             f"train --size SIZE --cpu-budget MIN` (benchmarks/peer_converge.py), one thread, `nice -n 5`, at most "
             f"two trainings at once; CPU budget per training: {budget_txt} (user + system time of the training's "
             "processes, /usr/bin/time; mlmd and NequIP are stopped when it is spent unless their early stopping "
             "comes first, MACE's epoch count is chosen from a one-epoch probe so that its two stages fit it). "
             "Same split as above (64 train / 8 val / 13 test), test-set errors through each code's ASE calculator.",
             "", "These budgets are short: no code reaches convergence in them (the learning curves of mlmd and "
             "NequIP are still falling when the budget stops them; MACE gets a handful of epochs), so the table is "
             "accuracy per CPU budget, not at convergence; wall times were long because the shared machine's load "
             f"was {min(tl, default=0):.0f}-{max(tl, default=0):.0f} (1-minute average at the end of the trainings).",
             "", "Sizes: " + "; ".join(f"**{s}**: " + ", ".join(f"{NAMES[k]} {v[1]}" for k, v in d.items())
                                      for s, d in SIZES.items() if s in budgets), "",
             f"Throughput: `python benchmarks/peers.py trained-speed` (benchmarks/data/{SPEED_DATA}), "
             f"{int(n):,} water atoms, CPU time per MD step, keep-memory allocator for every process, each figure the "
             f"best of {max((r.get('round', 0) for r in recs), default=0) + 1} fresh processes, the routes "
             "interleaved round by round; each code's fastest route: mlmd's compiled copy (`mlmd package --compile "
             "aoti`) in LAMMPS and in ASE, NequIP `nequip-compile --mode aotinductor` in ASE, MACE torch.compile "
             "in ASE. The files timed are in the data file's header: where one is not the final weights (compiled "
             "from a checkpoint while the training ran, or MACE's probe model) it is the same network and code, and "
             "the cost of a step does not depend on the weights. "
             f"Run {when[0] if when else '?'} to {when[-1] if when else '?'}, 1-minute load average "
             f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} on 2 shared cores.", "",
             "| code | size | parameters | E MAE (meV/atom) | F MAE (meV/Å) | stress MAE (meV/Å³) | training CPU (min) "
             "| epochs | stopped by | MD atom-steps/CPU-s (route) |", "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        t, e = r["train"], r["test"]
        stop = "budget" if t.get("stopped_by_budget") else ("epochs fit to budget" if r["peer"] == "mace"
                                                             else "early stopping")
        th = r.get("throughput", {}).get(n)
        speed = f"{th['atom_steps_per_cpu_s']:,.0f} ({th['route'].split(', ', 1)[1]})" if th else "–"
        lines.append(f"| {r['code']} | {r['size']} | {t['parameters']:,} | {e['energy_per_atom_mae']:.2f} | "
                     f"{e['forces_mae']:.1f} | {e.get('stress_mae', float('nan')):.3f} | {t['cpu_s'] / 60:.1f} | "
                     f"{t['epochs']} | {stop} | {speed} |")
    missing = [f"{NAMES[k]} {sz}" for sz in budgets for k in NAMES
               if not any(r["peer"] == k and r["size"] == sz for r in rows)]
    if missing:  # a training whose record or test errors are not there (not run, or not finished)
        lines += ["", "No result (training not run or not finished): " + ", ".join(missing) + "."]
    lines += ["", f"At equal or lower force MAE ({int(n):,} atoms):", ""]
    lines += [f"- {h}" for h in headline(rows, n)]
    lines += ["", END]
    return "\n".join(lines)


def insert_section(text: str, new: str) -> str:
    """text with its converge section replaced by new; without one, new goes after the side-by-side section (or
    at the end)."""
    if START in text:
        return text[: text.index(START)] + new + text[text.index(END) + len(END):]
    fair_end = "<!-- peers-fair:end -->"
    if fair_end in text:
        k = text.index(fair_end) + len(fair_end)
        return text[:k] + "\n\n" + new + text[k:]
    return text.rstrip("\n") + "\n\n" + new + "\n"


def carry_section(old_text: str, path: Path) -> None:
    """Put the converge section of old_text back into a RESULTS.md that peer_report rewrote without it."""
    if START in old_text and path.is_file():
        section = old_text[old_text.index(START): old_text.index(END) + len(END)]
        path.write_text(insert_section(path.read_text(), section))


def pareto(p: Any, budgets: dict[str, float]) -> None:
    rows = collect(p, budgets)
    sizes = sorted({n for r in rows for n in r.get("throughput", {})}, key=int)
    if not sizes:
        raise SystemExit("no throughput measured yet: run `peers.py trained-speed` first")
    n = sizes[-1]
    timed = [r for r in rows if n in r.get("throughput", {})]
    out = p.BENCH / "data" / "converge.json"
    out.write_text(json.dumps({"budgets_cpu_s": budgets, "atoms": int(n), "rows": rows,
                               "front": [f"{timed[i]['code']} {timed[i]['size']}" for i in pareto_front(
                                   [(r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"])
                                    for r in timed])]}, indent=1))
    plot(timed, n, p.BENCH / "pareto.png")
    res = p.BENCH / "RESULTS.md"
    new = section(p, rows, n, budgets)
    res.write_text(insert_section(res.read_text(), new))
    print(new)
