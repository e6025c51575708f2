"""Building the LAMMPS plugin where it is first needed.

In a source checkout the plugin lives in plugins/lammps/build (scripts/ensure_env.sh builds it there, and so
does ``ensure_plugin`` when it is missing). An installed mlmd (wheel, `pip install .`) builds it once from
the sources it carries (mlmd/_share/lammps) into a cache folder keyed by the torch and LAMMPS versions and a
hash of those sources: ``$MLMD_PLUGIN_CACHE`` or ``~/.cache/mlmd/plugins/<key>/``. The build is locked (every
MPI rank's `lmp` start asks at once) and moved into place whole, so a half-built folder is never used.
Standard library only: the `lmp` entry point runs this.

``python -m mlmd.engines.lammps.build`` builds it now and prints the folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlmd.resources import checkout_root, plugin_source_dir

PLUGIN_FILE = "mlmdplugin.so"


class PluginBuildError(RuntimeError):
    """The plugin could not be built (no compiler, a missing dependency, a compiler error)."""


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "none"


def cache_key(sources: Path | None = None) -> str:
    """torch-<v>_lammps-<v>_<hash>: the hash covers the plugin sources, build.sh, vesin-torch and mlmd versions."""
    src = sources or plugin_source_dir()
    h = hashlib.sha256()
    for f in sorted([*src.glob("*.cpp"), *src.glob("*.h"), src / "build.sh"]):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(f"vesin-torch={_version('vesin-torch')} mlmd={_version('mlmd')}".encode())
    return f"torch-{_version('torch')}_lammps-{_version('lammps')}_{h.hexdigest()[:12]}"


def cache_base() -> Path:
    """$MLMD_PLUGIN_CACHE, else $XDG_CACHE_HOME/mlmd/plugins or ~/.cache/mlmd/plugins (absolute: LAMMPS gets it)."""
    if os.environ.get("MLMD_PLUGIN_CACHE"):
        return Path(os.environ["MLMD_PLUGIN_CACHE"]).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlmd" / "plugins").resolve()


def plugin_build_dir() -> Path:
    """The folder that holds (or will hold) mlmdplugin.so for this mlmd and these torch/LAMMPS versions."""
    root = checkout_root()
    if root is not None:
        return root / "plugins" / "lammps" / "build"
    return cache_base() / cache_key()


def _run_build_script(out: Path) -> None:
    src = plugin_source_dir()
    cxx = os.environ.get("CXX", "g++")
    missing = [tool for tool in ("bash", cxx) if shutil.which(tool) is None]
    if missing:
        raise PluginBuildError(
            f"cannot build the LAMMPS plugin: {' and '.join(missing)} not found. It is compiled from the sources "
            f"in {src} against this environment's torch and LAMMPS; install a C++ compiler (e.g. `apt-get install "
            "g++`, or set CXX) and run `python -m mlmd.engines.lammps.build`"
        )
    env = dict(os.environ, PYTHON=sys.executable, MLMD_PLUGIN_OUT=str(out))
    # progress line by line on stderr: `lmp` may be building it, and its stdout is the LAMMPS log
    with subprocess.Popen(["bash", str(src / "build.sh")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout or []:
            print(line, end="", file=sys.stderr, flush=True)
    if proc.returncode != 0 or not (out / PLUGIN_FILE).is_file():
        raise PluginBuildError(
            f"building the LAMMPS plugin from {src} failed (exit {proc.returncode}; the compiler output is above). "
            "Rerun with `python -m mlmd.engines.lammps.build` once fixed"
        )


def ensure_plugin() -> Path:
    """The path of mlmdplugin.so, built first if it is not there (progress on stderr; PluginBuildError if not)."""
    out = plugin_build_dir()
    so = out / PLUGIN_FILE
    if so.is_file():
        return so
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(out.parent / f".{out.name}.lock", "w")
    except OSError as err:
        raise PluginBuildError(
            f"cannot build the LAMMPS plugin into {out}: {err}; set MLMD_PLUGIN_CACHE to a writable folder"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process (an MPI rank) may be building it: wait for it
        if so.is_file():
            return so
        print(f"[mlmd] building the LAMMPS plugin (once for torch {_version('torch')} + LAMMPS "
              f"{_version('lammps')}) from {plugin_source_dir()} into {out}", file=sys.stderr, flush=True)
        if checkout_root() is not None:  # the repository's own build folder, as scripts/ensure_env.sh makes it
            _run_build_script(out)
            return so
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        for stale in (tmp, out):  # a folder left without the plugin (a killed build): start again
            shutil.rmtree(stale, ignore_errors=True)
        try:
            _run_build_script(tmp)
            shutil.rmtree(tmp / "obj", ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return so


if __name__ == "__main__":
    try:
        print(ensure_plugin().parent)
    except PluginBuildError as err:
        sys.exit(f"[mlmd] {err}")
