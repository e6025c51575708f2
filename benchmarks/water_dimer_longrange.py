"""Where long range matters: water-dimer binding energy as the separation grows past the cutoff.

Compares the short-range-only and the hybrid (short + fixed-charge Ewald/direct Coulomb + D3) bundled models
with the reference method they were trained on (tblite GFN2-xTB), for a rigid dimer pulled apart along
the O-O axis. Beyond r_cut (5 Å) the short-only model sees two isolated molecules: its binding energy is
exactly zero there, while the reference keeps the dipole-dipole (~1/R^3) and dispersion tails.
``--predicted P.pt`` adds a predicted-charge model (inputs/water/train_predicted.yaml) as a third curve, with
its predicted monomer dipole moments.

    .venv/bin/python benchmarks/water_dimer_longrange.py [--short M.pt] [--hybrid H.pt] [--predicted P.pt]
        [--png out.png]
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
    p.add_argument("--predicted", default=None, help="a predicted-charge model, shown as a third curve")
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
    curves = {"short": e_short, "hybrid": e_hyb}
    if args.predicted:
        predicted = MLMDCalculator(args.predicted)
        curves["predicted"] = np.array([binding(lambda: predicted, r) for r in rs])
        mono = dimer(10.0)[:3]
        for name, calc in (("GFN2-xTB", TBLite(method="GFN2-xTB", verbosity=0)), ("predicted", predicted)):
            mono.calc = calc
            q = mono.get_charges()
            dip = np.linalg.norm(q @ mono.positions) / 0.2081943  # e Å -> debye
            print(f"isolated monomer, {name}: charges O {q[0]:+.3f} H {q[1]:+.3f} {q[2]:+.3f} e, dipole {dip:.2f} D")
    print(f"{'R_OO/Å':>7}{'GFN2/meV':>11}" + "".join(f"{n + '/meV':>14}" for n in curves))
    for k, r in enumerate(rs):
        print(f"{r:>7.1f}{ref[k] * 1000:>11.2f}" + "".join(f"{c[k] * 1000:>14.2f}" for c in curves.values()))
    far = rs > 5.0
    print("beyond 5 Å: mean |error| " + ", ".join(
        f"{n} {np.mean(np.abs(c - ref)[far]) * 1000:.2f} meV" for n, c in curves.items()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rs, ref * 1000, "ko-", label="GFN2-xTB (reference)")
    ax.plot(rs, e_short * 1000, "s--", label="mlmd short-range only")
    ax.plot(rs, e_hyb * 1000, "^-", label="mlmd hybrid (+ Coulomb + D3)")
    if "predicted" in curves:
        ax.plot(rs, curves["predicted"] * 1000, "v-", label="mlmd predicted charges (+ Coulomb + D3)")
    ax.axvline(5.0, color="grey", lw=0.8, ls=":")
    ax.text(5.05, ax.get_ylim()[0] * 0.9, "r_cut", color="grey")
    ax.set_xlabel("O–O distance (Å)")
    ax.set_ylabel("binding energy (meV)")
    ax.set_ylim(min(ref.min(), *(c.min() for c in curves.values())) * 1000 * 1.1, 60)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
