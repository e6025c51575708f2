"""MPICH's waiting ranks sleep when the ranks outnumber the cores (mlmd.engines.lammps.mpi_environment)."""

import subprocess

from mlmd.engines.lammps import mpi_environment, runner


def test_sleeping_ranks_only_when_ranks_outnumber_cores(monkeypatch):
    monkeypatch.delenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", raising=False)
    assert mpi_environment(1, cores=1) == {}
    assert mpi_environment(2, cores=2) == {}  # a core per rank: polling gives the lowest latency
    assert mpi_environment(4, cores=2) == {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    assert mpi_environment(2, threads=2, cores=2) == {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    monkeypatch.setenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", "0")  # the user's own choice stays
    assert mpi_environment(4, cores=2) == {}


def test_run_lammps_gives_mpirun_the_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", raising=False)
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
    assert seen["8"]["MPIR_CVAR_ENABLE_HEAVY_YIELD"] == "1"
