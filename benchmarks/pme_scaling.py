"""Cost of the electrostatics against the number of atoms: PME grows as N log N, Ewald faster.

    OMP_NUM_THREADS=1 python benchmarks/pme_scaling.py [--molecules 64 216 512 1000 2744 4096 8000]

Water boxes at 1 g/cm^3 (TIP3P charges), relative force accuracy 1e-4 (LAMMPS kspace convention: the code picks
the real-space cutoff, the mesh or the number of k-vectors from it), energy + forces + stress by autograd as in
an MD step, TorchScript-compiled, one thread, float32. Median CPU time of --repeats calls after two warm-up calls.
Ewald stops once one call passes --ewald-max-s. Writes benchmarks/pme_scaling.json and .png: time per step
against N with the fitted power law and N log N through the largest PME point for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def cpu_time_of(fn, repeats: int) -> float:
    for _ in range(2):  # warm-up: TorchScript's profiling executor specialises on the first two calls
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def step_of(module, atoms, q: torch.Tensor):
    """Energy, forces and stress of one electrostatics module: what an MD step asks of it."""
    pos0 = torch.tensor(atoms.positions, dtype=torch.float32)
    cell0 = torch.tensor(np.asarray(atoms.cell.array), dtype=torch.float32)
    pbc = torch.tensor(atoms.pbc)

    def step() -> None:
        strain = torch.zeros(3, 3, requires_grad=True)
        pos = pos0.clone().requires_grad_(True)
        deform = torch.eye(3) + strain
        e = module(pos @ deform, cell0 @ deform, pbc, q).sum()
        torch.autograd.grad(e, [pos, strain])

    return step


def fit_exponent(points: list[tuple[int, float]]) -> float:
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    from mlmd.data.generate import box_length, water_lattice
    from mlmd.model.electrostatics import Electrostatics, FixedCharges

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, nargs="+", default=[64, 216, 512, 1000, 2744, 4096, 8000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ewald-max-s", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "pme_scaling")
    args = ap.parse_args()
    torch.set_num_threads(1)
    charges = FixedCharges({8: -0.834, 1: 0.417})
    modules = {m: torch.jit.script(Electrostatics(1e-4, method=m).to(torch.float32)) for m in ("pme", "ewald")}
    rows: list[dict] = []
    ewald_on = True
    for n_mol in args.molecules:
        atoms = water_lattice(n_mol, box_length(n_mol, 1.0), np.random.default_rng(0))
        q = charges(torch.tensor(atoms.numbers)).float()
        row = {"atoms": len(atoms), "pme_cpu_s": cpu_time_of(step_of(modules["pme"], atoms, q), args.repeats)}
        if ewald_on:
            row["ewald_cpu_s"] = cpu_time_of(step_of(modules["ewald"], atoms, q), args.repeats)
            ewald_on = row["ewald_cpu_s"] < args.ewald_max_s
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    result: dict = {"rows": rows, "accuracy": 1e-4, "threads": 1, "dtype": "float32"}
    for key in ("pme", "ewald"):
        pts = [(r["atoms"], r[f"{key}_cpu_s"]) for r in rows if f"{key}_cpu_s" in r and r["atoms"] >= 1000]
        if len(pts) >= 2:
            result[f"{key}_exponent_from_1000_atoms"] = fit_exponent(pts)
    print({k: v for k, v in result.items() if k.endswith("exponent_from_1000_atoms")})
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, colour in (("pme", "C0"), ("ewald", "C3")):
        pts = [(r["atoms"], r[f"{key}_cpu_s"]) for r in rows if f"{key}_cpu_s" in r]
        expo = result.get(f"{key}_exponent_from_1000_atoms")
        label = key.upper() + (f" (N^{expo:.2f} from 1,000 atoms)" if expo else "")
        ax.loglog(*zip(*pts), "o-", color=colour, label=label)
    n_last, t_last = rows[-1]["atoms"], rows[-1]["pme_cpu_s"]
    n = np.geomspace(rows[0]["atoms"], n_last, 50)
    ax.loglog(n, t_last * n * np.log(n) / (n_last * np.log(n_last)), "k--", lw=1, label="N log N (through last PME)")
    ax.set_xlabel("atoms")
    ax.set_ylabel("CPU s per energy + forces + stress")
    ax.set_title("Electrostatics cost, water, accuracy 1e-4, 1 thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
