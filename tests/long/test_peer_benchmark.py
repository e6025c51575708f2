"""The peer benchmark's own bookkeeping: the split it hands to MACE/NequIP is mlmd's, labels unchanged, and the
LAMMPS log and /usr/bin/time parsers read what those tools print."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from ase import Atoms

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _frames(n: int) -> list[Atoms]:
    rng = np.random.default_rng(3)
    frames = []
    for k in range(n):
        a = Atoms("OH2", positions=rng.uniform(0, 4, (3, 3)), cell=np.eye(3) * 6.0, pbc=True)
        a.info["energy"] = -10.0 - k  # frame k is recognisable by its energy
        a.arrays["forces"] = rng.normal(size=(3, 3))
        a.info["stress"] = rng.normal(size=6) * 1e-3
        frames.append(a)
    return frames


def test_split_export_is_mlmds_split_with_labels_kept(tmp_path):
    import ase.io

    from mlmd.data.structures import read_structures, split_indices

    frames = _frames(20)
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    (tmp_path / "c.yaml").write_text("data:\n  path: d.xyz\n  val_fraction: 0.2\n  test_fraction: 0.25\n"
                                     "  split_seed: 7\n")
    paths = _module("peer_split").export_split(tmp_path / "c.yaml", tmp_path / "out")
    split = split_indices(20, 0.2, 0.25, 7)
    ref = read_structures(tmp_path / "d.xyz")
    for name, idx in split.items():
        got = ase.io.read(paths[name], index=":")
        assert [round(-a.info["REF_energy"] - 10.0) for a in got] == idx
        for a, i in zip(got, idx):
            assert "energy" not in a.info and a.calc is None  # REF_ keys: no calculator results for ASE to take
            np.testing.assert_allclose(a.positions, ref[i].positions)
            np.testing.assert_allclose(a.arrays["REF_forces"], ref[i].forces)
            np.testing.assert_allclose(np.asarray(a.info["REF_stress"]).reshape(3, 3), ref[i].stress)
    assert sorted(sum(split.values(), [])) == list(range(20))


def test_thermo_rows_reads_the_last_table():
    log = """Step Temp
         0   1.0
         5   2.0
Loop time of 1 on 1 procs for 5 steps with 3 atoms
Step Temp CPU model_s bridge_s
         0   300   0      0     0
         1   301   0.5    0.4   0.01
         2   302   1.0    0.8   0.02
Loop time of 1.0 on 1 procs for 2 steps with 3 atoms
"""
    head, rows = _module("peer_worker").thermo_rows(log)
    assert head == ["Step", "Temp", "CPU", "model_s", "bridge_s"]
    assert rows == [[0, 300, 0, 0, 0], [1, 301, 0.5, 0.4, 0.01], [2, 302, 1.0, 0.8, 0.02]]


def test_time_v_adds_the_parts_of_a_resumed_training(tmp_path):
    summary = ("\tUser time (seconds): {u}\n\tSystem time (seconds): {s}\n"
               "\tElapsed (wall clock) time (h:mm:ss or m:ss): {w}\n\tMaximum resident set size (kbytes): {m}\n"
               "\tExit status: 0\n")
    (tmp_path / "train_part1.log").write_text("epoch 1\n" + summary.format(u=100, s=10, w="1:02:03", m=2048))
    (tmp_path / "train.log").write_text("epoch 2\n" + summary.format(u=50, s=5, w="2:30.5", m=1024))
    out = _module("peers").time_v(tmp_path / "train.log")
    assert out["cpu_s"] == 165.0
    assert out["wall_s"] == 3723.0 + 150.5
    assert out["peak_rss_mb"] == 2.0 and out["parts"] == 2
