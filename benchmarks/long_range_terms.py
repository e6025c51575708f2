"""CPU time of the long-range terms alone, per change: the hybrid water model's Coulomb (PME) and D3 terms as an
older file compiled them against this mlmd's, energy + forces per call, MD-like moves between calls.

    OMP_NUM_THREADS=1 python benchmarks/long_range_terms.py [--replicate 1,1,1] [--calls 8]

Water from inputs/lammps/water_3000.data (3,072 atoms; --replicate 2,2,2: 24,576). Every variant is scripted
(as packaged) and run under TorchScript's plain executor (as the engines run it), float32, one thread; the
variants take turns call by call, positions moved by 0.01 Å (normal, per component) before each round, so
that the Verlet list is exercised as in MD (0.5 fs steps of water at 300 K move atoms ~0.01-0.02 Å).
Variants: "before" = the terms compiled in tests/data/water_model_hybrid_before_cn_entry.pt (torch-pme's PME
assignment, its calculators, vesin every call); then this mlmd's code with the same parameters (skin 0: vesin
every call; skin 1: the Verlet list), B-spline PME at 8 Å, and the bundled file's splitting (B-spline PME,
6 Å real space). Prints median CPU s per call and the ratio to "before". ``--files A.pt B.pt``: also the Coulomb and
D3 terms of each packaged file as compiled in it (e.g. the bundled hybrid before and after a change). Memory is kept
between calls as the engines keep it (mlmd.engines.allocator), so the terms do not pay page faults for their
temporaries.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
OLD = REPO / "tests" / "data" / "water_model_hybrid_before_cn_entry.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replicate", default="1,1,1")
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--files", nargs="*", default=[],
                   help="packaged files whose compiled Coulomb and D3 to time as well")
    args = p.parse_args()
    torch.set_num_threads(1)
    from mlmd.engines.allocator import keep_freed_memory

    keep_freed_memory()  # as the engines do
    import ase.io

    from mlmd import ewald_params as ep
    from mlmd.deploy.load import load_model
    from mlmd.model.longrange import CoulombTerm, DispersionTerm

    atoms = ase.io.read(REPO / "inputs" / "lammps" / "water_3000.data", format="lammps-data", atom_style="atomic",
                        Z_of_type={1: 1, 2: 8})
    atoms.pbc = True
    atoms = atoms.repeat(tuple(int(x) for x in args.replicate.split(",")))
    old, card = load_model(OLD)
    elec, disp = card.long_range.electrostatics, card.long_range.dispersion
    charges = {int(z): float(q) for z, q in elec.charges.items()}
    card_params = {k: v for k, v in elec.to_json().items() if k not in ("mode", "charges")}
    acc = float(elec.accuracy)
    d3_kw = {"atomic_numbers": [1, 8], "functional": disp.functional, "cutoff": disp.cutoff,
             "cutoff_cn": disp.cutoff_cn, "smooth_width": disp.smooth_width, "tail_correction": disp.tail_correction}

    def script(term: torch.nn.Module) -> torch.jit.ScriptModule:
        return torch.jit.script(term.to(torch.float32).eval())

    variants = {
        "coulomb before (torch-pme, Lagrange, 8 Å)": next(old.long_range.children()),
        "coulomb, same parameters, vesin each call": script(CoulombTerm(charges, params=card_params, nl_skin=0.0)),
        "coulomb, same parameters, Verlet list": script(CoulombTerm(charges, params=card_params)),
        "coulomb, B-spline PME, 8 Å": script(CoulombTerm(charges, params=ep.choose_parameters(
            acc, "auto", r_cut=8.0, pme_assignment="bspline"))),
        "coulomb, B-spline PME, 6 Å (bundled)": script(CoulombTerm(charges, params=ep.choose_parameters(
            acc, "auto", r_cut=6.0, pme_assignment="bspline"))),
        "d3 before": next(old.dispersion.children()),
        "d3, vesin each call": script(DispersionTerm(**d3_kw, nl_skin=0.0)),
        "d3, Verlet list": script(DispersionTerm(**d3_kw)),
    }
    for path in args.files:
        module = load_model(path)[0]
        variants[f"coulomb compiled in {path}"] = next(module.long_range.children())
        variants[f"d3 compiled in {path}"] = next(module.dispersion.children())
    cell = torch.tensor(atoms.cell.array, dtype=torch.float32)
    numbers = torch.tensor(atoms.numbers)
    pbc = torch.tensor([True] * 3)
    rng = np.random.default_rng(0)
    positions = atoms.positions.copy()

    def call(term) -> float:
        pos = torch.tensor(positions, dtype=torch.float32, requires_grad=True)
        start = time.process_time()
        with torch.jit.optimized_execution(False):
            e = term(pos, cell, numbers, pbc).sum()
            torch.autograd.grad(e, pos)
        return time.process_time() - start

    for term in variants.values():  # warm-up
        call(term)
        call(term)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.calls):
        positions = positions + rng.normal(scale=0.01, size=positions.shape)
        for name, term in variants.items():
            times[name].append(call(term))
    print(f"# {len(atoms)} atoms, {args.calls} calls each, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| variant | CPU s per call (median) | vs before |\n|---|---|---|")
    for name, ts in times.items():
        before = np.median(times["coulomb before (torch-pme, Lagrange, 8 Å)" if name.startswith("coulomb")
                                 else "d3 before"])
        print(f"| {name} | {np.median(ts):.4f} | {before / np.median(ts):.2f}x |")


if __name__ == "__main__":
    main()
