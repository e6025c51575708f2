"""The long-range-share benchmark's own bookkeeping: its model (b) is the hybrid with the long range off (the same
short-range energy), and its LAMMPS log parser reads the timed run, not the warm-up or the setup."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
HYBRID = BENCH.parent / "inputs" / "water" / "water_model_hybrid.pt"


def _share():
    spec = importlib.util.spec_from_file_location("long_range_share", BENCH / "long_range_share.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["long_range_share"] = mod
    spec.loader.exec_module(mod)
    return mod


# two runs as LAMMPS 2025.7 prints them with `timer full` (numbers changed): the counters c_t[7], c_t[8] are
# cumulative, and the second run's first row comes after its setup's own force call
LOG = """\
  2 by 2 by 1 MPI processor grid
   Step         PotEng         c_t[7]         c_t[8]
         0  -141443.8272 0.4 0.07
         2  -141444.0043 1.0 0.2
Loop time of 4.5 on 4 procs for 2 steps with 3072 atoms

50.0% CPU use with 4 MPI tasks x 1 OpenMP threads

Section |  min time  |  avg time  |  max time  |%varavg|  %CPU | %total
-----------------------------------------------------------------------
Pair    | 4.5        | 4.5        | 4.5        |   0.0 |  14.0 | 99.27
Kspace  | 0.02       | 0.02       | 0.02       |   0.0 |  16.0 |  0.47
   Step         PotEng         c_t[7]         c_t[8]
         2  -141444.0043 1.25 0.25
         6  -141446.5801 2.25 0.65
Loop time of 8.0 on 4 procs for 4 steps with 3072 atoms

Performance: 0.018 ns/day, 1362.036 hours/ns, 0.408 timesteps/s, 1.253 katom-step/s
25.0% CPU use with 4 MPI tasks x 1 OpenMP threads

MPI task timing breakdown:
Section |  min time  |  avg time  |  max time  |%varavg|  %CPU | %total
-----------------------------------------------------------------------
Pair    | 5.0        | 6.0        | 7.0        |   0.0 |  20.0 | 75.00
Kspace  | 0.5        | 1.0        | 1.5        |   0.0 |  10.0 | 12.50
Neigh   | 0          | 0          | 0          |   0.0 | 100.0 |  0.00
Comm    | 1.0        | 1.0        | 1.0        |   0.0 |  50.0 | 12.50
Other   |            | 7.755e-05  |            |       |       |  0.00
"""


def test_parse_log_reads_the_timed_run():
    got = _share().parse_log(LOG, 4)
    assert got["procs"] == 4 and got["grid"] == "2x2x1"
    assert got["wall"] == pytest.approx(8.0 / 4)
    assert got["cpu"] == pytest.approx(8.0 * 0.25 * 4 / 4)  # loop wall x CPU use x ranks, per step
    assert got["pair"] == pytest.approx(6.0 * 0.20 * 4 / 4)  # avg time x %CPU x ranks, per step
    assert got["kspace"] == pytest.approx(1.0 * 0.10 * 4 / 4)
    assert got["model"] == pytest.approx((2.25 - 1.25) / 4)  # not from the warm-up run's last row
    assert got["d3"] == pytest.approx((0.65 - 0.25) / 4)


@pytest.mark.skipif(not HYBRID.is_file(), reason="the bundled hybrid water model is not there")
def test_short_range_file_is_the_hybrid_without_its_long_range_terms(tmp_path):
    import ase.io
    import torch

    from mlmd.deploy.load import load_model
    from mlmd.engines.ase import MLMDCalculator

    short = _share().short_range_file(HYBRID, tmp_path / "short.pt")
    atoms = ase.io.read(BENCH.parent / "inputs" / "water" / "water_box_192.xyz")
    module, card = load_model(HYBRID)
    assert not load_model(short)[1].long_range.terms
    # the hybrid's own terms, evaluated alone (float64: the difference must not drown in rounding)
    module = module.double()
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), torch.tensor(atoms.numbers),
            torch.tensor([True] * 3))
    terms = list(module.long_range.children()) + list(module.dispersion.children())
    e_long = sum(float(t(*args).sum()) for t in terms)
    assert abs(e_long) > 1.0  # both terms are there and not negligible
    e_hybrid = MLMDCalculator(HYBRID, dtype="float64", domain="off").get_potential_energy(atoms)
    e_short = MLMDCalculator(short, dtype="float64", domain="off").get_potential_energy(atoms)
    assert e_short == pytest.approx(e_hybrid - e_long, abs=1e-8 * len(atoms))
