"""Where long range matters: water-dimer binding energy as the separation grows past the cutoff.

Compares the short-range-only and the hybrid (short + fixed-charge Ewald/direct Coulomb + D3) bundled models
with the reference method they were trained on (tblite GFN2-xTB), for a rigid dimer pulled apart along
the O-O axis. Beyond r_cut (5 Å) the short-only model sees two isolated molecules: its binding energy is
exactly zero there, while the reference keeps the dipole-dipole (~1/R^3) and dispersion tails.

    .venv/bin/python benchmarks/water_dimer_longrange.py [--short M.pt] [--hybrid H.pt] [--png out.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms

ROOT = Path(__file__).resolve().parent.parent


def dimer(r_oo: float) -> Atoms:
    # donor water in the xy-plane with one H pointing at the acceptor O on the x axis (near-linear H-bond)
    ang = np.deg2rad(104.5)
    d = [[0, 0, 0], [0.957, 0, 0], [0.957 * np.cos(ang), 0.957 * np.sin(ang), 0]]
    a = [[r_oo, 0, 0], [r_oo + 0.24, 0.0, 0.927], [r_oo + 0.24, 0.0, -0.927]]
    return Atoms("OHHOHH", positions=d + a)


def binding(calc_factory, r: float) -> float:
    full = dimer(r)
    full.calc = calc_factory()
    e = full.get_potential_energy()
    parts = 0.0
    for sel in (slice(0, 3), slice(3, 6)):
        m = full[sel]
        m.calc = calc_factory()
        parts += m.get_potential_energy()
    return e - parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", default=str(ROOT / "inputs/water/water_model.pt"))
    p.add_argument("--hybrid", default=str(ROOT / "inputs/water/water_model_hybrid.pt"))
    p.add_argument("--png", default=str(ROOT / "benchmarks/water_dimer_longrange.png"))
    args = p.parse_args()
    from tblite.ase import TBLite

    from mlmd.engines.ase import MLMDCalculator

    rs = np.array([2.9, 3.2, 3.6, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0])
    ref = np.array([binding(lambda: TBLite(method="GFN2-xTB", verbosity=0), r) for r in rs])
    short = MLMDCalculator(args.short)
    hybrid = MLMDCalculator(args.hybrid)
    e_short = np.array([binding(lambda: short, r) for r in rs])
    e_hyb = np.array([binding(lambda: hybrid, r) for r in rs])
    print(f"{'R_OO/Å':>7}{'GFN2/meV':>11}{'short/meV':>11}{'hybrid/meV':>12}")
    for r, a, b, c in zip(rs, ref, e_short, e_hyb):
        print(f"{r:>7.1f}{a * 1000:>11.2f}{b * 1000:>11.2f}{c * 1000:>12.2f}")
    far = rs > 5.0
    print(f"beyond 5 Å: mean |error| short-only {np.mean(np.abs(e_short - ref)[far]) * 1000:.2f} meV, "
          f"hybrid {np.mean(np.abs(e_hyb - ref)[far]) * 1000:.2f} meV")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rs, ref * 1000, "ko-", label="GFN2-xTB (reference)")
    ax.plot(rs, e_short * 1000, "s--", label="mlmd short-range only")
    ax.plot(rs, e_hyb * 1000, "^-", label="mlmd hybrid (+ Coulomb + D3)")
    ax.axvline(5.0, color="grey", lw=0.8, ls=":")
    ax.text(5.05, ax.get_ylim()[0] * 0.9, "r_cut", color="grey")
    ax.set_xlabel("O–O distance (Å)")
    ax.set_ylabel("binding energy (meV)")
    ax.set_ylim(min(ref.min(), e_hyb.min()) * 1000 * 1.1, 60)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
