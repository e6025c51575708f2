"""Force error against MD throughput of the budget-trained models (peer_converge): benchmarks/data/converge.json,
benchmarks/pareto.png and the RESULTS.md section between the converge markers.

    python benchmarks/peers.py pareto --budgets bundled=2 large=4 bundled=8

One row and one point per (code, size, budget). Rows whose training folder is gone (runs/ is not kept) are carried
over from the previous converge.json, so a later budget adds rows without dropping the earlier ones.
Throughput of a model: atoms / (its least CPU seconds per MD step over the processes of one run of
benchmarks/data/converge_speed.jsonl, the last that timed it) at the largest box measured, through its code's
fastest route there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

START, END = "<!-- converge:start -->", "<!-- converge:end -->"
PEERS = ("mlmd", "nequip", "mace")


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


def read_speed(path: Path) -> list[dict[str, Any]]:
    """The speed data file's lines, headers included, in order."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row_key(r: dict[str, Any]) -> tuple[str, str, float]:
    return r["peer"], r["size"], round(float(r["budget_cpu_min"]) * 60, 6)


def label(r: dict[str, Any]) -> str:
    return f"{r['code']} {r['size']} {r['budget_cpu_min']:g} CPU-min"


def collect(p: Any, budgets: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """One row per code, size and budget: training record, test errors, validation curve, fastest route's
    throughput. From the training folder where it is there, else the previous converge.json's row."""
    from peer_converge import NAMES, SPEED_DATA, curve_summary, model_rates, run_dir, val_force_curve

    old_file = p.BENCH / "data" / "converge.json"
    old = {row_key(r): r for r in json.loads(old_file.read_text())["rows"]} if old_file.is_file() else {}
    rates = model_rates(read_speed(p.BENCH / "data" / SPEED_DATA))
    rows = []
    for size, budget in budgets:
        base = run_dir(p.RUNS, size, budget)
        for peer in PEERS:
            tr, te = base / f"train_{peer}.json", base / f"test_{peer}.json"
            key = (peer, size, round(budget, 6))
            if tr.is_file() and te.is_file():
                row: dict[str, Any] = {"code": NAMES[peer], "peer": peer, "size": size, "budget_cpu_min": budget / 60,
                                       "train": json.loads(tr.read_text()), "test": json.loads(te.read_text())}
                kind, values = val_force_curve(peer, base / peer)
                if values:
                    row["val_force_curve"] = curve_summary(kind, values)
            elif key in old:
                row = dict(old[key])
            else:
                continue
            if key in rates:
                row["throughput"] = {}
                for n, got in rates[key]["atoms"].items():
                    route = max(got, key=got.get)
                    row["throughput"][n] = {"route": route, "atom_steps_per_cpu_s": got[route], "all_routes": got,
                                            "run": rates[key]["run"]}
            rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]], n: str) -> list[str]:
    """For each peer model, budget by budget: the best throughput of an mlmd model trained on no more CPU, timed in
    the same run (same load), at an equal or lower force MAE; and the ratio."""
    out = []
    for b in sorted({r["budget_cpu_min"] for r in rows}):
        for r in rows:
            if r["peer"] == "mlmd" or r["budget_cpu_min"] != b or n not in r.get("throughput", {}):
                continue
            f, t = r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"]
            run = r["throughput"][n].get("run")
            mine = [(m["test"]["forces_mae"], m["throughput"][n]["atom_steps_per_cpu_s"]) for m in rows
                    if m["peer"] == "mlmd" and m["budget_cpu_min"] <= b and n in m.get("throughput", {})
                    and m["throughput"][n].get("run") == run]
            best = throughput_at_error(mine, f)
            if best is None:
                lowest = f"{min(mine)[0]:.1f}" if mine else "none timed in the same run"
                out.append(f"{label(r)} (F MAE {f:.1f} meV/Å): no mlmd model of no more CPU reaches its force MAE "
                           f"(mlmd's lowest: {lowest})")
            else:
                out.append(f"{label(r)} (F MAE {f:.1f} meV/Å, {t:,.0f} atom-steps/CPU-s): mlmd at equal or lower "
                           f"force MAE runs **{best / t:.2f}x** its throughput")
    return out


def plot(rows: list[dict[str, Any]], n: str, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"mlmd": "tab:blue", "nequip": "tab:orange", "mace": "tab:green"}
    marks = {"bundled": "o", "large": "s"}
    pts = [(r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    for r, (f, t) in zip(rows, pts):  # marker area grows with the budget
        ax.scatter(t, f, color=colors[r["peer"]], marker=marks.get(r["size"], "^"), zorder=3,
                   s=25 + 12 * r["budget_cpu_min"], edgecolor="k", linewidth=0.5,
                   label=f"{label(r)} ({r['train']['parameters']:,} par.)")
        later = any(q["peer"] == r["peer"] and q["size"] == r["size"] and q["budget_cpu_min"] < r["budget_cpu_min"]
                    for q in rows)  # the end of an arrow: its label below, clear of the shorter budget's
        ax.annotate(f"{r['code']} {r['size']} {r['budget_cpu_min']:g} min", (t, f), textcoords="offset points",
                    xytext=(6, -11 if later else 4), fontsize=7)
    # the same code and size at a longer budget: a thin arrow from the shorter one
    for i, r in enumerate(rows):
        longer = [j for j, q in enumerate(rows) if q["peer"] == r["peer"] and q["size"] == r["size"]
                  and q["budget_cpu_min"] > r["budget_cpu_min"]]
        if longer:
            j = min(longer, key=lambda j: rows[j]["budget_cpu_min"])
            ax.annotate("", xy=(pts[j][1], pts[j][0]), xytext=(pts[i][1], pts[i][0]), zorder=1,
                        arrowprops={"arrowstyle": "->", "color": colors[r["peer"]], "lw": 0.8, "alpha": 0.7})
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
    ax.plot(xs[::-1], ys[::-1], "k--", lw=1, zorder=2, label="Pareto front (all budgets)")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"MD throughput, atom-steps per CPU-second ({int(n):,} water atoms, 1 thread)")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_title("Water (GFN2-xTB): accuracy at equal CPU budgets (marker size: budget, arrows: "
                 "longer budget) against MD speed", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def curve_cell(r: dict[str, Any]) -> str:
    c = r.get("val_force_curve")
    if not c or c.get("still_falling") is None:
        return "–"
    what = "still falling" if c["still_falling"] else "not falling"
    stage = " of stage two" if "stage two" in c["kind"] else ""
    jump = f" (then up to {c['peak_after_best']:.1f}x it)" if c.get("peak_after_best", 1) > 1.5 else ""
    return (f"{what}: best {c['best']:.1f} at epoch {c['best_epoch']}/{c['epochs']}{stage}{jump}, last "
            f"{c['tail_epochs']} epochs {100 * c['tail_change']:+.1f}%")


def speed_runs(lines: list[dict[str, Any]], rows: list[dict[str, Any]], n: str) -> list[str]:
    """A sentence per speed run that timed a row: when, the load, how many processes per route, which rows."""
    used = {}
    for r in rows:
        if n in r.get("throughput", {}):
            used.setdefault(r["throughput"][n].get("run"), []).append(label(r))
    out, head = [], "?"
    recs: dict[str, list[dict[str, Any]]] = {}
    for r in lines:
        if r.get("header"):
            head = r.get("time", "?")
        else:
            recs.setdefault(head, []).append(r)
    for run, labels in used.items():
        rs = recs.get(run, [])
        loads = [float(x["uptime"].split("load average:")[1].split(",")[0]) for x in rs if "uptime" in x]
        when = sorted(x["time"] for x in rs)
        out.append(f"run {when[0] if when else run} to {when[-1] if when else '?'}, 1-minute load average "
                   f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} on 2 shared cores, best of "
                   f"{max((x.get('round', 0) for x in rs), default=0) + 1} processes per route: {', '.join(labels)}")
    return out


def section(p: Any, rows: list[dict[str, Any]], n: str, budgets: Sequence[tuple[str, float]]) -> str:
    from peer_converge import NAMES, SIZES, SPEED_DATA

    lines_all = read_speed(p.BENCH / "data" / SPEED_DATA)
    tl = [r["train"]["load_avg_after"] for r in rows if "load_avg_after" in r["train"]]
    sizes = [s for s in SIZES if any(s == b[0] for b in budgets)]
    budget_txt = ", ".join(f"{s} {b / 60:g} CPU-min" for s, b in budgets)
    curves = [r for r in rows if curve_cell(r) != "–"]
    lines = [START, "## Accuracy at an equal CPU budget against MD throughput (the Pareto front)", "",
             f"Written by `python benchmarks/peers.py pareto --budgets "
             f"{' '.join(f'{s}={b / 60:g}' for s, b in budgets)}` on {time.strftime('%Y-%m-%d')}; data "
             f"`benchmarks/data/converge.json`, plot `benchmarks/pareto.png`. Trained by `python benchmarks/peers.py "
             f"train --size SIZE --cpu-budget MIN` (benchmarks/peer_converge.py), one thread, under `nice`; CPU "
             f"budgets per training: {budget_txt} (user + system time of the training's processes, /usr/bin/time; "
             "mlmd and NequIP are stopped when it is spent unless their early stopping comes first, MACE's epoch "
             "count is chosen from a one-epoch probe so that its two stages fit it). Same split as above (64 train / "
             "8 val / 13 test), test-set errors through each code's ASE calculator. The machine's 1-minute load at "
             f"the end of the trainings was {min(tl, default=0):.0f}-{max(tl, default=0):.0f}: budgets are CPU time, "
             "so the load lengthens the wall time, not the training.", "",
             "Sizes: " + "; ".join(f"**{s}**: " + ", ".join(f"{NAMES[k]} {v[1]}" for k, v in SIZES[s].items())
                                   for s in sizes), "",
             f"Throughput: `python benchmarks/peers.py trained-speed --budgets SIZE=MIN ...` (benchmarks/data/"
             f"{SPEED_DATA}), {int(n):,} water atoms, CPU time per MD step, keep-memory allocator for every process, "
             "fresh processes, the routes interleaved round by round; each code's fastest route: mlmd's compiled "
             "copy (`mlmd package --compile aoti`) in LAMMPS and in ASE, NequIP `nequip-compile --mode aotinductor` "
             "in ASE, MACE torch.compile in ASE. The files timed are in each run's header line: where one is not the "
             "final weights (MACE's probe model) it is the same network and code, and the cost of a step does not "
             "depend on the weights. Speed runs:", ""]
    lines += [f"- {s}" for s in speed_runs(lines_all, rows, n)]
    lines += ["", "| code | size | budget (CPU-min) | parameters | E MAE (meV/atom) | F MAE (meV/Å) | stress MAE "
              "(meV/Å³) | training CPU (min) | epochs | stopped by | validation force error at the end | MD "
              "atom-steps/CPU-s (route) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        t, e = r["train"], r["test"]
        stop = "budget" if t.get("stopped_by_budget") else ("epochs fit to budget" if r["peer"] == "mace"
                                                             else "early stopping")
        th = r.get("throughput", {}).get(n)
        speed = f"{th['atom_steps_per_cpu_s']:,.0f} ({th['route'].split(', ')[-1]})" if th else "–"
        lines.append(f"| {r['code']} | {r['size']} | {r['budget_cpu_min']:g} | {t['parameters']:,} | "
                     f"{e['energy_per_atom_mae']:.2f} | {e['forces_mae']:.1f} | "
                     f"{e.get('stress_mae', float('nan')):.3f} | {t['cpu_s'] / 60:.1f} | {t['epochs']} | {stop} | "
                     f"{curve_cell(r)} | {speed} |")
    missing = [f"{NAMES[k]} {sz} {b / 60:g} CPU-min" for sz, b in budgets for k in PEERS
               if not any(row_key(r) == (k, sz, round(b, 6)) for r in rows)]
    if missing:  # a training whose record or test errors are not there (not run, or not finished)
        lines += ["", "No result (training not run or not finished): " + ", ".join(missing) + "."]
    lines += ["", "Validation force error at the end: each code's per-epoch validation force error from its own log "
              "(mlmd and NequIP: MAE, MACE: the RMSE its log prints, meV/Å, over its stage two only: the switch to an "
              "energy weight of 1000 makes the force error jump); *still falling* when its best over the "
              "last quarter of the epochs (at least 2) is more than 1% below its best before them (the percentage: "
              "that change)."]
    if len(curves) < len(rows):
        lines += ["Rows marked – were trained before the curves were recorded and their logs are not kept (the "
                  "section that first reported them said mlmd's and NequIP's 2 / 4 CPU-min curves were still falling "
                  "when the budget stopped them, and MACE had a handful of epochs)."]
    falling = [label(r) for r in curves if r["val_force_curve"]["still_falling"]]
    flat = [label(r) for r in curves if not r["val_force_curve"]["still_falling"]]
    if falling:
        lines += [f"Still falling when the budget ran out: {', '.join(falling)}: not converged."]
    if flat:
        lines += [f"Not falling by more than 1% over the last quarter: {', '.join(flat)}."]
    lines += ["", f"At equal or lower force MAE ({int(n):,} atoms; against mlmd models trained on no more CPU and "
              "timed in the same speed run):", ""]
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


def pareto(p: Any, budgets: Sequence[tuple[str, float]]) -> None:
    rows = collect(p, budgets)
    sizes = sorted({n for r in rows for n in r.get("throughput", {})}, key=int)
    if not sizes:
        raise SystemExit("no throughput measured yet: run `peers.py trained-speed` first")
    n = sizes[-1]
    timed = [r for r in rows if n in r.get("throughput", {})]
    out = p.BENCH / "data" / "converge.json"
    out.write_text(json.dumps({"budgets_cpu_s": [[s, b] for s, b in budgets], "atoms": int(n), "rows": rows,
                               "front": [label(timed[i]) for i in pareto_front(
                                   [(r["test"]["forces_mae"], r["throughput"][n]["atom_steps_per_cpu_s"])
                                    for r in timed])]}, indent=1))
    plot(timed, n, p.BENCH / "pareto.png")
    res = p.BENCH / "RESULTS.md"
    new = section(p, rows, n, budgets)
    res.write_text(insert_section(res.read_text(), new))
    print(new)
