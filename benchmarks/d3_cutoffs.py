"""D3(BJ) cutoffs: error against the standard cutoffs and CPU cost per MD step, next to the short-range model.

    OMP_NUM_THREADS=1 python benchmarks/d3_cutoffs.py [--repeats 5] [--functional gfn2]

System: the 192-atom water box (inputs/water/water_box_192.xyz) replicated 2x2x4 = 3,072 atoms (the same
configuration as inputs/lammps/water_3000.data). Reference: D3(BJ) at simple-dftd3's standard cutoffs
(two-body 60 bohr = 31.75 Å, CN 40 bohr = 21.17 Å, sharp), float64. Each row is a (two-body cutoff, CN cutoff,
smooth width) setting: its energy error per atom and force errors (RMS and max over components) against the
reference, both evaluated in float64, and the CPU time of one energy + forces + stress evaluation (autograd
through positions and a strain) of the TorchScript-compiled term in the model's dtype (float32 unless
--dtype), median over --repeats. The short-range step is the packaged model (inputs/water/water_model.pt)
through mlmd.engines.ase.MLMDCalculator (energy, forces, stress), one thread; its timings are interleaved
with the D3 ones (same process, same allocator settings), and the table gives each D3 row's share of it.
On a shared machine the absolute figures move with the load (printed); the ratios are taken within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

# (two-body cutoff Å, CN cutoff Å, smooth width Å, tail correction); None: the standard cutoffs (sharp)
SETTINGS: list[tuple[float, float, float, bool] | None] = [
    None,
    (15.0, 10.0, 0.0, False),
    (12.0, 8.0, 3.0, False),
    (10.0, 8.0, 3.0, False),
    (12.0, 8.0, 3.0, True),
    (10.0, 8.0, 3.0, True),
    (9.0, 8.0, 2.0, True),
    (8.0, 8.0, 2.0, True),
    (7.0, 7.0, 2.0, True),
    (6.0, 6.0, 1.5, True),
]


def label(setting) -> str:
    if setting is None:
        return "standard 31.75/21.17, sharp"
    cut, cut_cn, width, tail = setting
    return f"{cut:g}/{cut_cn:g}, width {width:g}" + (", tail" if tail else "")


def module_for(setting, functional: str):
    from mlmd.model.dispersion import D3Dispersion

    if setting is None:
        return D3Dispersion([1, 8], functional)
    cut, cut_cn, width, tail = setting
    return D3Dispersion([1, 8], functional, cutoff=cut, cutoff_cn=cut_cn, smooth_width=width, tail_correction=tail)


def energy_forces_stress(module, atoms, dtype):
    """Energy, forces = -dE/dR and stress (1/V) dE/d(strain) (eV/Å^3) by autograd."""
    pos = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
    strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
    sym = 0.5 * (strain + strain.T)
    e = module(pos + pos @ sym, cell + cell @ sym, torch.tensor(atoms.numbers), torch.tensor(atoms.pbc))
    g, gs = torch.autograd.grad(e, [pos, strain])
    return float(e.detach()), -g.numpy(), gs.numpy() / atoms.get_volume()


def step_fn(module, atoms, dtype):
    """Closure: energy, forces and stress by autograd through positions and a strain."""
    pos0 = torch.tensor(atoms.positions, dtype=dtype)
    cell0 = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
    numbers, pbc = torch.tensor(atoms.numbers), torch.tensor(atoms.pbc)

    def step():
        pos = pos0.clone().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
        sym = 0.5 * (strain + strain.T)
        e = module(pos + pos @ sym, cell0 + cell0 @ sym, numbers, pbc)
        torch.autograd.grad(e, [pos, strain])

    return step


def main() -> None:
    import ase.io
    from ase.calculators.calculator import all_changes

    from mlmd.engines.ase import MLMDCalculator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--functional", default="gfn2", help="damping parameters (the bundled hybrid model's: gfn2)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--model", default=str(REPO / "inputs/water/water_model.pt"))
    ap.add_argument("--baseline-module", default="", help="time an older dispersion.py at the sharp rows too")
    ap.add_argument("--skip-standard-timing", action="store_true", help="errors only for the standard row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    atoms = ase.io.read(REPO / "inputs/water/water_box_192.xyz").repeat((2, 2, 4))
    n = len(atoms)
    print(f"{n} water atoms, box {atoms.cell.lengths().round(2).tolist()} Å, functional {args.functional}, "
          f"1 thread, D3 timed in {args.dtype}, torch {torch.__version__}, {platform.processor() or '?'}")
    print(f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    # errors (float64) against the standard cutoffs
    e_ref, f_ref, s_ref = energy_forces_stress(module_for(None, args.functional).to(torch.float64), atoms,
                                               torch.float64)
    errors = {}
    for s in SETTINGS:
        e, f, st = energy_forces_stress(module_for(s, args.functional).to(torch.float64), atoms, torch.float64)
        df = f - f_ref
        errors[s] = ((e - e_ref) / n, float(np.sqrt((df**2).mean())), float(np.abs(df).max()),
                     float(np.abs(st - s_ref).max()) * 160.21766)  # eV/Å^3 -> GPa

    # interleaved timings: short-range model step, then each D3 setting
    calc = MLMDCalculator(args.model, threads=1)
    sr_atoms = atoms.copy()

    def sr_step():
        calc.calculate(sr_atoms, ["energy", "forces", "stress"], all_changes)

    timed: list = [s for s in SETTINGS if not (s is None and args.skip_standard_timing)]
    steps = {s: step_fn(torch.jit.script(module_for(s, args.functional).to(dtype)), atoms, dtype) for s in timed}
    baseline = None
    if args.baseline_module:  # an older dispersion.py: the sharp-cutoff rows again, for a before/after ratio
        import importlib.util

        spec = importlib.util.spec_from_file_location("d3_baseline", args.baseline_module)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
        for s in list(timed):
            if s is None or (s[2] == 0.0 and not s[3]):
                kw = {} if s is None else {"cutoff": s[0], "cutoff_cn": s[1]}
                old = torch.jit.script(baseline.D3Dispersion([1, 8], args.functional, **kw).to(dtype))
                steps[("baseline", s)] = step_fn(old, atoms, dtype)
                timed.append(("baseline", s))
    for fn in [sr_step, *steps.values()]:
        for _ in range(2):  # warm-up (TorchScript profiling executor)
            fn()
    cpu: dict = {s: [] for s in ["short", *timed]}
    for _ in range(args.repeats):
        for key, fn in [("short", sr_step), *steps.items()]:
            t = time.process_time()
            fn()
            cpu[key].append(time.process_time() - t)
    sr = float(np.median(cpu["short"]))
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"\nshort-range model step (E+F+stress, MLMDCalculator): {sr * 1e3:.0f} ms CPU\n")
    print("| D3 cutoffs (two-body/CN, Å) | energy error (meV/atom) | force error RMS / max (meV/Å) "
          "| stress error max (MPa) | D3 CPU per step (ms) | share of short-range step |")
    print("|---|---|---|---|---|---|")
    for s in SETTINGS:
        de, frms, fmax, smax = errors[s]
        cost = f"{np.median(cpu[s]) * 1e3:.0f}" if s in cpu else "-"
        share = f"{np.median(cpu[s]) / sr * 100:.0f}%" if s in cpu else "-"
        print(f"| {label(s)} | {de * 1e3:+.3f} | {frms * 1e3:.3f} / {fmax * 1e3:.3f} | {smax * 1e3:.2f} "
              f"| {cost} | {share} |")
    for key in timed:
        if isinstance(key, tuple) and key[0] == "baseline":
            before, after = np.median(cpu[key]), np.median(cpu[key[1]])
            print(f"before ({args.baseline_module}), {label(key[1])}: {before * 1e3:.0f} ms CPU per step, "
                  f"{before / sr * 100:.0f}% of the short-range step; now {after * 1e3:.0f} ms ({before / after:.1f}x)")
    print(f"\nreference D3 energy {e_ref / n * 1e3:.3f} meV/atom, pressure {-np.trace(s_ref) / 3 * 160217.66:.1f} MPa")


if __name__ == "__main__":
    main()
