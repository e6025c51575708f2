"""CPU cost of D3 inside pair_style mlmd next to the short-range model, per MD step, in LAMMPS.

    OMP_NUM_THREADS=1 python benchmarks/lammps_d3_cost.py [--ranks 1 4] [--steps 2 6]

Liquid water, inputs/lammps/water_3000.data (3,072 atoms), the bundled short-range model
(inputs/water/water_model.pt) packaged again with the model's own D3 at the production settings
(mlmd.model.d3_parameters.PRODUCTION_SETTINGS: 7 Å two-body and CN cutoffs, 2 Å smooth width, tail correction;
GFN2 damping as the hybrid water model), NVE. `compute pair mlmd` gives the CPU seconds of each rank summed over
ranks: [7] in the short-range model, [8] in D3 (its graph and its model call). Each configuration runs twice (the
two --steps counts) and the figures are the differences divided by the extra steps, so that start-up cancels.
The last columns are the CPU s per step of the whole LAMMPS processes (every rank; neighbour lists and ghost
communication included) with D3 and for the short-range file alone, and their ratio: what D3 costs in all.
On several ranks the file's D3 exchanges the ghosts' coordination numbers (ghosts to max(cutoff, cutoff_cn) + skin;
files without local_dispersion_cn: cutoff + cutoff_cn + skin); the grid is 2x2x1 on 4 ranks.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch
from lammps_timing import run_and_read

REPO = Path(__file__).resolve().parent.parent
GRIDS = {1: "", 2: "processors 2 1 1", 4: "processors 2 2 1", 8: "processors 2 2 2"}

SCRIPT = """\
units           metal
atom_style      atomic
boundary        p p p
newton          on
{grid}
read_data       {data}
pair_style      mlmd {model}
pair_coeff      * * H O
neighbor        1.0 bin
neigh_modify    every 1 delay 0 check yes one 4000 page 80000
velocity        all create 300.0 4928 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
compute         t all pair mlmd
thermo_style    custom step c_t[7] c_t[8]
thermo_modify   format float %.9g
thermo          {steps}
run             {steps}
"""


def d3_model(out: Path, short: Path) -> Path:
    """The short-range model of `short` with the model's own D3 at the production settings."""
    from mlmd.deploy.export import package
    from mlmd.deploy.load import load_model
    from mlmd.model.d3_parameters import PRODUCTION_SETTINGS
    from mlmd.model.longrange import DispersionTerm
    from mlmd.model.potential import potential_from_hparams

    module, card = load_model(short)
    potential = potential_from_hparams(card.hparams).to(getattr(torch, card.dtype))
    prefix = "potential."
    potential.load_state_dict({k[len(prefix):]: v for k, v in module.state_dict().items() if k.startswith(prefix)})
    term = DispersionTerm(atomic_numbers=list(card.atomic_numbers), functional="gfn2", **PRODUCTION_SETTINGS)
    package(potential.eval(), out, long_range=[term])
    return out


def run(model: Path, ranks: int, steps: int, workdir: Path) -> tuple[float, float, float]:
    """compute pair mlmd [7] and [8] after `steps` steps, and the CPU s of the whole LAMMPS run (every rank)."""
    text = SCRIPT.format(grid=GRIDS[ranks], data=REPO / "inputs" / "lammps" / "water_3000.data", model=model,
                         steps=steps)
    return run_and_read(text, workdir, f"in.{ranks}_{steps}", ranks, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, nargs=2, default=[2, 6])
    p.add_argument("--model", default=str(REPO / "inputs" / "water" / "water_model.pt"))
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; 3,072 water atoms, CPU s per step summed over ranks")
    print(f"{'ranks':>5} {'short-range s':>14} {'D3 s':>8} {'D3/short':>9} {'step s, no D3':>14} {'step s, D3':>11} "
          f"{'ratio':>6}")
    extra = args.steps[1] - args.steps[0]
    with tempfile.TemporaryDirectory(prefix="mlmd-d3cost-") as tmp:
        model = d3_model(Path(tmp) / "water_d3.pt", Path(args.model))
        for ranks in args.ranks:
            per_step = {}
            for which in (model, Path(args.model)):  # with D3, then the short-range file alone
                a = run(which, ranks, args.steps[0], Path(tmp))
                b = run(which, ranks, args.steps[1], Path(tmp))
                per_step[which] = [(y - x) / extra for x, y in zip(a, b)]
            short, d3, total = per_step[model]
            alone = per_step[Path(args.model)][2]
            print(f"{ranks:>5} {short:>14.3f} {d3:>8.3f} {d3 / short:>9.2f} {alone:>14.3f} {total:>11.3f} "
                  f"{total / alone:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
