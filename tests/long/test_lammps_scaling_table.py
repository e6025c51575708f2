"""benchmarks/lammps_scaling.py's reduction of repeated runs and its table (no LAMMPS run: rows given)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module():
    spec = importlib.util.spec_from_file_location("lammps_scaling", BENCH / "lammps_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(ranks, work, model, wall, peak=100.0, pinned=True, mode="layers"):
    return {"atoms": 12288, "ranks": ranks, "mode": "local" if ranks == 1 else mode, "threads": 1, "pinned": pinned,
            "work_s_per_step": work, "model_cpu_s_per_step": model, "wall_s_per_step": wall,
            "exchange_s_per_step": 0.0, "peak_mb_per_rank": peak}


def test_repeated_runs_reduce_to_their_median_and_largest_peak():
    mod = _module()
    rows = [_row(1, 1.0, 0.9, 1.0, 1800), _row(1, 0.8, 0.7, 0.8, 1850), _row(1, 0.9, 0.8, 0.9, 1700),
            _row(4, 1.2, 1.0, 1.1, 900), _row(4, 0.5, 0.9, 1.0, 910), _row(4, 1.0, 0.95, 1.05, 905)]
    med = {r["ranks"]: r for r in mod.median_rows(rows)}
    assert med[1]["work_s_per_step"] == 0.9 and med[1]["model_cpu_s_per_step"] == 0.8 and med[1]["runs"] == 3
    # one disturbed short run made a figure below the model's own CPU: the median is not pulled by it
    assert med[4]["work_s_per_step"] == 1.0 and med[4]["peak_mb_per_rank"] == 910


def test_table_gives_efficiency_and_speed_up_against_the_same_pinning():
    mod = _module()
    rows = [_row(1, 0.9, 0.8, 0.9), _row(4, 1.0, 0.9, 1.0),  # pinned: work efficiency 90%
            _row(1, 2.0, 1.9, 2.0, pinned=False), _row(2, 2.2, 2.0, 1.1, pinned=False)]
    lines = mod.table(rows).splitlines()
    assert "| 12,288 | one core | 4 | layers | 1 | 1.000 | 0.900 | 90% | 89% | 1.000 | 0.90x | 100 |" in lines
    assert "| 12,288 | any core | 2 | layers | 1 | 2.200 | 2.000 | 91% | 95% | 1.100 | 1.82x | 100 |" in lines
    # ranks bound to cores of their own: a group of its own, against its own 1-rank row
    bound = [{**_row(1, 1.9, 1.8, 1.9, pinned=False), "bound": True}, {**_row(2, 2.0, 1.9, 1.0, pinned=False),
                                                                       "bound": True}]
    lines = mod.table(rows + bound).splitlines()
    assert "| 12,288 | own cores | 2 | layers | 1 | 2.000 | 1.900 | 95% | 95% | 1.000 | 1.90x | 100 |" in lines
    assert sum("| 1 | local |" in line for line in lines) == 3  # each placement its own baseline
