"""benchmarks/long_run.py on a short run: the energy drift it measures is bounded and the engine's resident
memory does not grow (the full 100,000-step runs are the benchmark's; this keeps its machinery honest).

The model is a random-weight float64 one whose atoms are tethered to their start (fix spring/self, its energy
counted), so that the run is stable whatever the weights; 2,000 steps of 0.5 fs in LAMMPS, NVE. Measured here:
drift ~2e-7 eV/atom/ps, memory growth ~0.1 MB per 100k steps.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import REPO, make_potential, water_box
from mlmd.deploy.export import package

pytestmark = [pytest.mark.slow, pytest.mark.lammps]


def _long_run_module():
    spec = importlib.util.spec_from_file_location("long_run", REPO / "benchmarks" / "long_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_long_run_drift_and_memory(tmp_path):
    pot = make_potential(dtype=torch.float64, l_max=1, channels=8, vector_channels=4, seed=8)
    with torch.no_grad():
        pot.scale.fill_(3.0)  # forces that do real work against the tether
    package(pot, tmp_path / "model.pt")
    water_box(2, seed=8).write(tmp_path / "start.xyz")
    out = tmp_path / "run"
    code = _long_run_module().main([
        "--engines", "lammps", "--ensembles", "nve", "--steps", "2000", "--report-every", "10",
        "--model", str(tmp_path / "model.pt"), "--structure", str(tmp_path / "start.xyz"), "--out", str(out),
        "--lammps-extra", "fix tether all spring/self 2.0", "--lammps-extra", "fix_modify tether energy yes",
    ])
    assert code == 0
    run = json.loads(out.with_suffix(".json").read_text())["runs"][0]
    assert run["steps"] == 2000 and len(run["series"]["rss_MB"]) == 201
    assert out.with_suffix(".png").stat().st_size > 10_000
    # velocity Verlet on a conservative force: no systematic drift (1e-5 eV/atom/ps would be 0.1 eV/atom in 10 ns)
    assert abs(run["etotal_drift_eV_per_atom_per_ps"]) < 1e-5
    assert run["etotal_range_eV_per_atom"] < 1e-3
    # a leak of 1 kB per step would add 2 MB over the run, 100 MB per 100k steps
    assert run["rss_after_warmup_MB"] > 50  # the lmp process tree with libtorch, not the wrapper script alone
    assert run["rss_last_MB"] - run["rss_after_warmup_MB"] < 2.0
    assert run["rss_growth_MB_per_100k_steps"] < 20.0
