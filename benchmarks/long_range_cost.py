"""Cost of the long-range terms (electrostatics, D3(BJ) dispersion) next to the short-range model, per step.

    OMP_NUM_THREADS=1 python benchmarks/long_range_cost.py --molecules 64 1000 --threads 1

Each term runs TorchScript-compiled on a periodic water box at 1 g/cm^3 (64 waters = 192 atoms, 1000 waters =
3000 atoms) and is timed for energy + forces + stress by autograd (what an MD step needs); the median over
--repeats calls after one warm-up is printed in ms, with the short-range packaged model (inputs/water/
water_model.pt) as the reference step and simple-dftd3 (Fortran, same cutoffs, its OpenMP threads) as a peer
for D3. On a shared machine absolute figures move with the load average (printed): compare rows of one run, and
prefer one thread there (OpenMP threads spinning against other jobs made 2 threads 5x slower than 1 here).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def water_box(n_molecules: int, seed: int = 0):
    from mlmd.data.generate import box_length, water_lattice

    return water_lattice(n_molecules, box_length(n_molecules, 1.0), np.random.default_rng(seed))


def timed(fn, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median wall-clock and CPU (process) time in ms; the CPU time is less sensitive to a busy machine."""
    for _ in range(warmup):  # TorchScript's profiling executor optimises during the first calls
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def term_step(module, atoms, dtype, extra):
    """Closure: energy, forces and stress of one term by autograd through a strain."""
    pos0 = torch.tensor(atoms.positions, dtype=dtype)
    cell0 = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
    pbc = torch.tensor(atoms.pbc)

    def step():
        pos = pos0.clone().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
        sym = 0.5 * (strain + strain.T)
        e = module(pos + pos @ sym, cell0 + cell0 @ sym, *extra(pbc))
        torch.autograd.grad(e, [pos, strain])

    return step


def main() -> None:
    from mlmd.model.dispersion import D3Dispersion
    from mlmd.model.electrostatics import Electrostatics, FixedCharges
    from mlmd.units import BOHR_TO_ANGSTROM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, nargs="+", default=[64, 1000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--model", default=str(REPO / "inputs/water/water_model.pt"))
    ap.add_argument("--skip-standard-d3-above", type=int, default=100000,
                    help="skip D3 with the standard 60/40 bohr cutoffs above this many atoms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"{args.threads} thread(s), {args.dtype}, torch {torch.__version__}, {platform.processor() or '?'}")
    charges = FixedCharges({8: -0.834, 1: 0.417})
    for n_mol in args.molecules:
        atoms = water_box(n_mol)
        n = len(atoms)
        numbers = torch.tensor(atoms.numbers)
        q = charges(numbers).to(dtype)
        rows = []
        if Path(args.model).exists():
            model = torch.jit.load(args.model)
            pos = torch.tensor(atoms.positions, dtype=torch.float32)
            cell = torch.tensor(np.asarray(atoms.cell.array), dtype=torch.float32)
            pbc = torch.tensor(atoms.pbc)
            rows.append(("short-range model (packaged, E+F+stress)",
                         timed(functools.partial(model.compute, pos, cell, numbers, pbc, True), args.repeats)))
        for method in ("ewald", "pme"):
            elec = torch.jit.script(Electrostatics(1e-4, method=method).to(dtype))
            rows.append((f"electrostatics {method} (accuracy 1e-4)",
                         timed(term_step(elec, atoms, dtype, lambda pbc, q=q: (pbc, q)), args.repeats)))
        d3_settings = [("D3(BJ) standard cutoffs 31.8/21.2 Å", {}),
                       ("D3(BJ) cutoffs 15/10 Å", {"cutoff": 15.0, "cutoff_cn": 10.0})]
        if n <= 400:
            d3_settings.append(("D3(BJ)+ATM cutoffs 15/10/8 Å", {"cutoff": 15.0, "cutoff_cn": 10.0,
                                                              "cutoff_three_body": 8.0, "three_body": True}))
        for label, kw in d3_settings:
            if not kw and n > args.skip_standard_d3_above:
                continue
            d3 = torch.jit.script(D3Dispersion([1, 8], "pbe", **kw).to(dtype))
            rows.append((label, timed(term_step(d3, atoms, dtype, lambda pbc, z=numbers: (z, pbc)), args.repeats)))
            try:
                from dftd3.interface import DispersionModel, RationalDampingParam

                model_ref = DispersionModel(atoms.numbers, atoms.positions / BOHR_TO_ANGSTROM,
                                            np.asarray(atoms.cell.array) / BOHR_TO_ANGSTROM, np.array(atoms.pbc))
                if kw:
                    model_ref.set_realspace_cutoff(kw["cutoff"] / BOHR_TO_ANGSTROM,
                                                   kw.get("cutoff_three_body", 21.17) / BOHR_TO_ANGSTROM,
                                                   kw["cutoff_cn"] / BOHR_TO_ANGSTROM)
                param = RationalDampingParam(method="pbe", atm=bool(kw.get("three_body", False)))
                rows.append(("  peer: simple-dftd3 (same settings)",
                             timed(lambda m=model_ref, p=param: m.get_dispersion(p, grad=True), args.repeats, 1)))
            except ImportError:
                pass
        print(f"\n{n} atoms ({n_mol} waters, box {atoms.cell[0, 0]:.2f} Å)")
        base = rows[0][1][1] if rows and rows[0][0].startswith("short") else None
        print(f"  {'':<46}{'wall ms':>10}{'CPU ms':>10}  CPU time / short-range model")
        for label, (wall, cpu) in rows:
            share = f"{cpu / base:7.2f}" if base else ""
            print(f"  {label:<46}{wall:>10.1f}{cpu:>10.1f}  {share}")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
