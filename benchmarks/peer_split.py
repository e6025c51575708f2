"""Writes mlmd's own train/val/test split of a data set to three extxyz files that any peer code reads.

    python benchmarks/peer_split.py [inputs/water/train.yaml] --out runs/peers/data

The split is mlmd's (mlmd.data.structures.split_indices with the config's fractions and seed), so a peer trained
on train.xyz and tested on test.xyz sees exactly the structures mlmd did. Labels are stored under REF_energy,
REF_forces, REF_stress (3x3, eV/Å³, ASE sign): names that ASE does not turn into a calculator's results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mlmd.config import load_config
from mlmd.data.structures import Structure, read_structures, split_indices

KEYS = {"energy": "REF_energy", "forces": "REF_forces", "stress": "REF_stress"}


def _atoms(s: Structure):
    a = s.to_atoms()
    if s.energy is not None:
        a.info[KEYS["energy"]] = s.energy
    if s.forces is not None:
        a.arrays[KEYS["forces"]] = np.asarray(s.forces, dtype=float)
    if s.stress is not None:
        a.info[KEYS["stress"]] = np.asarray(s.stress, dtype=float).reshape(9)
    return a


def export_split(config: str | Path, out: str | Path) -> dict[str, Path]:
    import ase.io

    config = Path(config)
    cfg = load_config(config)
    dc = cfg.data
    data = Path(dc.path)
    if not data.is_absolute():
        data = config.parent / data
    structures = read_structures(data, dc.energy_key, dc.forces_key, dc.stress_key)
    split = split_indices(len(structures), dc.val_fraction, dc.test_fraction, dc.split_seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, idx in split.items():
        paths[name] = out / f"{name}.xyz"
        ase.io.write(paths[name], [_atoms(structures[i]) for i in idx], format="extxyz")
    (out / "split.json").write_text(json.dumps({"source": str(data), **split}))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="inputs/water/train.yaml")
    ap.add_argument("--out", default="runs/peers/data")
    args = ap.parse_args()
    for name, path in export_split(args.config, args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
