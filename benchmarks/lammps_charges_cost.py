"""CPU cost of predicted charges in LAMMPS: the model's own Ewald sum inside pair_style mlmd next to the model.

    OMP_NUM_THREADS=1 python benchmarks/lammps_charges_cost.py [--copies 1 2] [--ranks 1] [--accuracy 1e-4]

Liquid water (inputs/water/water_box_192.xyz, repeated copies x copies x copies), the bundled short-range model
(inputs/water/water_model.pt) with a charge head (random head weights, per-species offsets O -0.8 e, H 0.4 e:
the cost does not depend on the weights) and Ewald at the given accuracy, NVE. `compute pair mlmd` gives the CPU
seconds of each rank summed over ranks: [7] in the model (short range and charge head, forward and backward), [10]
in the Ewald sum (real space, reciprocal space with its MPI sums, the charge-response weights). Each
configuration runs twice (the two --steps counts) and the figures are the differences divided by the extra steps,
so that start-up cancels. The last column is the CPU s per step of the whole LAMMPS processes.

Measured 2026-12-06 (2-core VM, load 8-10, 1 rank, accuracy 1e-4, CPU s per step):
    atoms   model   Ewald   Ewald/model   step
      192   0.016   0.003   0.19          0.020
     1536   0.135   0.043   0.32          0.170
     5184   0.434   0.296   0.68          0.769
The reciprocal part grows as N x (number of k-vectors) ~ N^2 at the card's fixed splitting: beyond ~5,000 atoms
it costs more than the model (PME would be the next step; see the module docstring of pair_mlmd_charges.cpp).
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
GRIDS = {1: "", 2: "processors 2 1 1", 4: "processors 2 2 1"}

SCRIPT = """\
units           metal
atom_style      charge
boundary        p p p
newton          on
{grid}
read_data       {data}
{pair_lines}
neighbor        1.0 bin
velocity        all create 300.0 4928 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
compute         t all pair mlmd
thermo_style    custom step c_t[7] c_t[10]
thermo_modify   format float %.9g
thermo          {steps}
run             {steps}
"""


def charges_model(out: Path, short: Path, accuracy: float) -> Path:
    """The short-range model of `short` with a charge head and Ewald at `accuracy`."""
    from mlmd.deploy.export import package
    from mlmd.deploy.load import load_model
    from mlmd.model.potential import potential_from_hparams
    from mlmd.model.predicted_charges import PredictedCoulombTerm

    module, card = load_model(short)
    potential = potential_from_hparams({**card.hparams, "charge_head": True}).to(getattr(torch, card.dtype))
    prefix = "potential."
    state = {k[len(prefix):]: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    potential.load_state_dict(state, strict=False)  # the charge head keeps its random weights
    offsets = {8: -0.8, 1: 0.4}
    with torch.no_grad():
        potential.charge_offsets.copy_(torch.tensor([offsets[z] for z in card.atomic_numbers]))
    package(potential.eval(), out, long_range=[PredictedCoulombTerm(offsets, accuracy=accuracy, method="ewald")])
    return out


def run(model: Path, data: Path, ranks: int, steps: int, workdir: Path) -> tuple[float, float, float]:
    """compute pair mlmd [7] and [10] after `steps` steps, and the CPU s of the whole LAMMPS run (every rank)."""
    import mlmd.engines.lammps as L

    text = SCRIPT.format(grid=GRIDS[ranks], data=data, pair_lines="\n".join(L.pair_lines(model)), steps=steps)
    return run_and_read(text, workdir, f"in.{ranks}_{steps}", ranks, steps)


def main() -> None:
    import ase.io

    import mlmd.engines.lammps as L

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ranks", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, nargs=2, default=[2, 6])
    p.add_argument("--accuracy", type=float, default=1e-4)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; Ewald accuracy {args.accuracy:g}; CPU s per step "
          "summed over ranks")
    print(f"{'atoms':>6} {'ranks':>5} {'model s':>9} {'Ewald s':>9} {'Ewald/model':>12} {'step s':>8}")
    extra = args.steps[1] - args.steps[0]
    box = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz")
    with tempfile.TemporaryDirectory(prefix="mlmd-chcost-") as tmp:
        model = charges_model(Path(tmp) / "water_q.pt", REPO / "inputs" / "water" / "water_model.pt", args.accuracy)
        for copies in args.copies:
            atoms = box.repeat(copies)
            data = Path(tmp) / f"w{copies}.data"
            L.write_data(atoms, data, L.model_elements(model), L.charges_of(L.model_card(model), model))
            for ranks in args.ranks:
                a = run(model, data, ranks, args.steps[0], Path(tmp))
                b = run(model, data, ranks, args.steps[1], Path(tmp))
                m, e, total = [(y - x) / extra for x, y in zip(a, b)]
                print(f"{len(atoms):>6} {ranks:>5} {m:>9.3f} {e:>9.3f} {e / m:>12.2f} {total:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
