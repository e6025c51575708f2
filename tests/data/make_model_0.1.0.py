"""Writes model_mlmd_0.1.0.pt and model_mlmd_0.1.0.json: a model packaged by the mlmd 0.1.0 release.

Run from a checkout of the tag, so that the file is what that release wrote (tests/workflows/test_version_policy.py
loads it with the current code and compares with the energies and forces computed here):

    git worktree add --detach /tmp/mlmd-0.1.0 v0.1.0
    cd /tmp/mlmd-0.1.0 && PYTHONPATH=$PWD OMP_NUM_THREADS=1 python /path/to/tests/data/make_model_0.1.0.py OUTDIR

Tiny random-weight H/O model (float64, fixed seed); the structures are fixed numbers written into the JSON.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import mlmd
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.potential import ShortRangePotential


def structures() -> dict:
    rng = np.random.default_rng(20250722)
    # 8 water molecules on a 2x2x2 grid in a 6.4 Å periodic box, random orientations, small displacements
    o_h = 0.96
    pos, numbers = [], []
    for ix in range(2):
        for iy in range(2):
            for iz in range(2):
                o = (np.array([ix, iy, iz]) + 0.5) * 3.2 + rng.normal(0, 0.1, 3)
                rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                h1 = o + rot @ np.array([o_h, 0.0, 0.0])
                h2 = o + rot @ (o_h * np.array([np.cos(1.824), np.sin(1.824), 0.0]))
                pos += [o, h1, h2]
                numbers += [8, 1, 1]
    periodic = {"numbers": numbers, "positions": np.array(pos).tolist(), "cell": (np.eye(3) * 6.4).tolist(),
                "pbc": [True, True, True]}
    cluster = {"numbers": numbers[:9], "positions": np.array(pos[:9]).tolist(), "cell": np.zeros((3, 3)).tolist(),
               "pbc": [False, False, False]}
    return {"periodic_water": periodic, "water_cluster": cluster}


def main(out: Path) -> None:
    from ase import Atoms

    torch.manual_seed(7)
    pot = ShortRangePotential([1, 8], 3.0, channels=8, vector_channels=4, l_max=1, n_layers=2, n_basis=6,
                              radial_hidden=8, avg_num_neighbors=8.0).to(torch.float64)
    with torch.no_grad():
        pot.shifts.copy_(torch.tensor([-2.5, -1.5], dtype=torch.float64))
        pot.scale.fill_(0.8)
    model = out / "model_mlmd_0.1.0.pt"
    package(pot.eval(), model)
    calc = MLMDCalculator(model)
    ref = {"mlmd_version": mlmd.__version__, "format_version": mlmd.MODEL_FORMAT_VERSION,
           "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "torch_version": torch.__version__, "structures": {}}
    for name, s in structures().items():
        atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])
        atoms.calc = calc
        entry = dict(s, energy=atoms.get_potential_energy(), forces=atoms.get_forces().tolist(),
                     energies=atoms.get_potential_energies().tolist())
        if all(s["pbc"]):
            entry["stress"] = atoms.get_stress().tolist()
        ref["structures"][name] = entry
    (out / "model_mlmd_0.1.0.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {model} ({model.stat().st_size} bytes) and its reference energies")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
