"""What `compute mlmd/uncertainty` costs in LAMMPS: ms/step of NVT water with a committee, without the compute and
with it invoked every N steps.

    OMP_NUM_THREADS=1 python benchmarks/lammps_uncertainty_cost.py --members 3 --waters 64 --steps 20 --every 1 10

The committee has K random-weight members of the inputs/water/train.yaml architecture (the cost of evaluation
does not depend on the weights). Runs inputs/lammps/in.water_nvt on one rank; the compute is invoked on thermo
steps (thermo every N). Rows: the committee without the compute (the dynamics alone: the members' mean), then
with the compute every N steps, through local_energies_of_member (one backward pass per member, through that
member) and, for comparison, through local_member_energies (the entry committee files had before: each of the
K backward passes runs through all K members). The machine's load average is printed: on a shared machine the
absolute figures move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mlmd.engines.lammps import REPO, SCRIPTS, md_summary, run_lammps, write_data


def committee(path: Path, members: int, older: bool = False) -> Path:
    from mlmd.config import load_config
    from mlmd.deploy import export
    from mlmd.deploy.packaged import PackagedModel
    from mlmd.model.ensemble import EnsemblePotential
    from mlmd.model.potential import build_potential

    cfg = load_config(REPO / "inputs" / "water" / "train.yaml")
    pots = []
    for k in range(members):
        torch.manual_seed(k)
        pots.append(build_potential([1, 8], cfg.model, 40.0).eval())
    if not older:
        export.package(EnsemblePotential(pots), path)
        return path

    class OlderCommittee(PackagedModel):  # the layout before local_energies_of_member
        @torch.jit.export
        def local_member_energies(
            self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
        ) -> torch.Tensor:
            return self.potential.member_energies(species, edge_index, edge_vectors)[:, :n_local]

    newer, export.PackagedEnsemble = export.PackagedEnsemble, OlderCommittee
    try:
        export.package(EnsemblePotential(pots), path)
    finally:
        export.PackagedEnsemble = newer
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--waters", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, nargs="+", default=[1, 10])
    args = p.parse_args()

    from mlmd.data.generate import water_lattice

    tmp = Path(tempfile.mkdtemp(prefix="mlmd-unc-bench-"))
    atoms = water_lattice(args.waters, 3.1 * round(args.waters ** (1 / 3)), np.random.default_rng(0))
    write_data(atoms, tmp / "water.data", ["H", "O"])
    models = {"member entry": committee(tmp / "committee.pt", args.members),
              "older entry": committee(tmp / "older.pt", args.members, older=True)}
    print(f"committee of {args.members} random-weight members (inputs/water/train.yaml architecture), "
          f"{len(atoms)} atoms, {args.steps} NVT steps, 1 rank, 1 torch thread")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    runs = [("no compute", "member entry", args.steps, "no")]
    runs += [(f"compute every {n}", entry, n, "yes") for entry in models for n in args.every]
    base = None
    print(f"{'':>20}{'file':>14}{'ms/step':>10}{'ratio':>8}")
    for label, entry, every, uncertainty in runs:
        variables = {"model": models[entry], "data": tmp / "water.data", "steps": args.steps, "temp": 300.0,
                     "dt": 0.0005, "seed": 1, "thermo": every, "elements": "H O", "replicate": "1 1 1",
                     "dump": tmp / "traj.lammpstrj", "dump_every": 0, "uncertainty": uncertainty}
        out = md_summary(run_lammps(SCRIPTS["nvt"], tmp, variables=variables, in_process=False))
        base = base or out["ms_per_step"]
        print(f"{label:>20}{entry:>14}{out['ms_per_step']:>10.1f}{out['ms_per_step'] / base:>8.2f}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
