"""Cu-Au training data labelled with ASE's EMT: the second bundled chemistry (a metal beside water).

    python inputs/cuau/make_data.py [-o inputs/cuau/cuau_emt.xyz] [--seed 0]

Random fcc Cu-Au alloys (32-atom cubic cells, 25 / 50 / 75% Au), lattice constants from pure Cu's (3.61 Å) to
pure Au's (4.08 Å) and 4% beyond either end, each run for a short Langevin MD at 300, 600 and 900 K with EMT (so
the data covers the volumes and temperatures an MD run of these alloys reaches), plus homogeneously strained
copies; every frame labelled with EMT's energy, forces and stress.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

HERE = Path(__file__).resolve().parent


def labelled(atoms):
    a = atoms.copy()
    a.calc = EMT()
    e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
    a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
    return a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=HERE / "cuau_emt.xyz")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    frames = []
    for x_au in (0.25, 0.5, 0.75):
        for a0 in (3.47, 3.61, 3.85, 4.08, 4.24):
            for temperature in (300.0, 600.0, 900.0):
                atoms = bulk("Cu", "fcc", a=a0, cubic=True).repeat((2, 2, 2))
                au = rng.choice(len(atoms), int(round(x_au * len(atoms))), replace=False)
                atoms.symbols[au] = "Au"
                atoms.calc = EMT()
                MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
                dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02,
                               rng=np.random.default_rng(int(rng.integers(1 << 31))))
                for _ in range(3):  # a frame every 40 steps after a 40-step start
                    dyn.run(40)
                    frames.append(labelled(atoms))
                strained = atoms.copy()
                strained.set_cell(atoms.cell * (1.0 + rng.uniform(-0.03, 0.03, (3, 3)) * np.eye(3)), scale_atoms=True)
                frames.append(labelled(strained))
    ase.io.write(args.output, frames)
    print(f"{len(frames)} frames of {len(frames[0])} atoms -> {args.output}")


if __name__ == "__main__":
    main()
