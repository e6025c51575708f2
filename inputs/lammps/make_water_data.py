"""Write water_3000.data: a periodic liquid-water box of at least 3,000 atoms (types 1 = H, 2 = O).

From inputs/water/water_box_192.xyz (64 molecules, equilibrated) replicated 2 x 2 x 4 (3,072 atoms) when that
file exists, otherwise 1,000 randomly oriented molecules on a grid at 1 g/cm^3 (3,000 atoms).

    python inputs/lammps/make_water_data.py [-o water_3000.data] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mlmd.data.generate import box_length, water_lattice
from mlmd.engines.lammps import write_data

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "water" / "water_box_192.xyz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=str(HERE / "water_3000.data"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if SOURCE.is_file():
        import ase.io

        atoms = ase.io.read(SOURCE).repeat((2, 2, 4))
        origin = f"{SOURCE.name} x (2, 2, 4)"
    else:
        atoms = water_lattice(1000, box_length(1000, 1.0), np.random.default_rng(args.seed))
        origin = "1000 molecules on a grid, 1 g/cm^3"
    write_data(atoms, args.output, ["H", "O"])
    print(f"wrote {args.output}: {len(atoms)} atoms ({origin})")


if __name__ == "__main__":
    main()
