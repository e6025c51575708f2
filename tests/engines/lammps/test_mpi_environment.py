"""MPICH's waiting ranks sleep when the ranks outnumber the cores (mlmd.engines.lammps.mpi_environment)."""

import subprocess

from mlmd.engines.lammps import mpi_environment, runner

QUIET = {
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE": "1",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT": "64",
    "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
}


def clear(monkeypatch):
    for key in QUIET:
        monkeypatch.delenv(key, raising=False)


def test_sleeping_ranks_only_when_ranks_outnumber_cores(monkeypatch):
    clear(monkeypatch)
    assert mpi_environment(1, cores=1) == {}
    assert mpi_environment(2, cores=2) == {}  # a core per rank: polling gives the lowest latency
    # the throttle's pause is what HEAVY_YIELD turns into a sleep: all three or nothing changes
    assert mpi_environment(4, cores=2) == QUIET
    assert mpi_environment(2, threads=2, cores=2) == QUIET
    monkeypatch.setenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", "0")  # the user's own choice stays
    assert mpi_environment(4, cores=2) == {k: v for k, v in QUIET.items() if k != "MPIR_CVAR_ENABLE_HEAVY_YIELD"}


def test_run_lammps_gives_mpirun_the_setting(monkeypatch, tmp_path):
    clear(monkeypatch)
    seen = {}

    def fake_run(cmd, cwd=None, env=None, **kwargs):
        seen[cmd[cmd.index("-np") + 1]] = env
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(runner, "plugin_path", lambda: tmp_path)
    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    script = tmp_path / "in.test"
    script.write_text("print hello\n")
    for n in (2, 8):
        runner.run_lammps(script, tmp_path, nprocs=n)
    assert "MPIR_CVAR_ENABLE_HEAVY_YIELD" not in seen["2"] and seen["2"]["OMP_NUM_THREADS"] == "1"
    assert all(seen["8"][k] == v for k, v in QUIET.items())
