"""inputs/water/water_box_192.xyz: 64 water molecules at 1 g/cm^3, equilibrated for the bundled model.

    python inputs/water/make_box.py [--model inputs/water/water_model.pt] [--seed 0]

2 ps of flexible TIP3P-FB MD in OpenMM (mlmd.data.generate, 300 K), then 1 ps of Langevin MD (300 K, friction
10/ps, 0.5 fs) with the packaged model in ASE, so that the box starts near the model's own liquid. The box that
shipped before was 0.4 eV/atom above the GFN2-xTB liquid (RMS force 2.4 eV/Å by GFN2-xTB): a model right about
GFN2 heated it to ~2,000 K within five steps. Prints the final frame's energy by the model (and GFN2-xTB with
--check-gfn2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(HERE / "water_model.pt"))
    ap.add_argument("--out", default=str(HERE / "water_box_192.xyz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--check-gfn2", action="store_true")
    args = ap.parse_args()

    import ase.io
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from mlmd.data.generate import Condition, sample_water_md
    from mlmd.engines.ase import MLMDCalculator

    rng = np.random.default_rng(args.seed)
    atoms = sample_water_md(Condition(64, 1.0, 300.0, 1), rng)[0]
    atoms.calc = MLMDCalculator(args.model, threads=1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300.0, friction=10.0 / (1000 * units.fs), rng=rng)
    for k in range(0, args.steps, 500):
        dyn.run(500)
        print(f"step {k + 500}: T {atoms.get_temperature():.0f} K, E/atom "
              f"{atoms.get_potential_energy() / len(atoms):.4f} eV", flush=True)
    atoms.wrap()
    out = atoms.copy()
    out.calc = None
    out.info = {"made_by": "inputs/water/make_box.py", "seed": args.seed}
    ase.io.write(args.out, out, format="extxyz")
    f = atoms.get_forces()
    print(f"wrote {args.out}: model E/atom {atoms.get_potential_energy() / len(atoms):.4f} eV, "
          f"RMS force {np.sqrt((f**2).mean()):.2f} eV/Å")
    if args.check_gfn2:
        from tblite.ase import TBLite

        ref = out.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        g = ref.get_forces()
        print(f"GFN2-xTB: E/atom {ref.get_potential_energy() / len(ref):.4f} eV, RMS force "
              f"{np.sqrt((g**2).mean()):.2f} eV/Å")


if __name__ == "__main__":
    main()
