"""Each clone runs its own code: the check made on `import mlmd`.

Every clone's `.venv` links one cached environment per set of pins (scripts/ensure_env.sh), and that
environment holds an editable install of the clone that last ran `make`. A process started from another
clone (its `.venv/bin/...`, or inside its tree) that reaches mlmd through that install would run the other
clone's code and LAMMPS plugin, so it is refused with the fix. A checkout named in PYTHONPATH is a choice
(the Makefile exports its own), and an installed mlmd (wheel, `pip install .`) is never refused.
Standard library only: every `lmp` start imports mlmd through the plugin's entry point.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlmd.resources import checkout_root, is_checkout

ALLOW_ENV = "MLMD_ALLOW_OTHER_CLONE"


class OtherCloneError(ImportError):
    """mlmd was imported from another clone than the one this process was started from."""


def _resolved(path: str | Path) -> Path | None:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return None


def _venv_clone() -> Path | None:
    """<clone> when the program runs as <clone>/<venv>/bin/<program> (the path as typed: .venv is a link)."""
    for program in (sys.argv[0] if sys.argv else "", sys.executable):
        if not program or program.startswith("-") or os.sep not in program:
            continue
        parents = Path(os.path.abspath(program)).parents
        if len(parents) > 2 and parents[0].name == "bin" and is_checkout(parents[2]):
            return parents[2]
    return None


def _cwd_clone() -> Path | None:
    try:
        here = Path.cwd()
    except OSError:  # the working folder was deleted
        return None
    return next((p for p in (here, *here.parents) if is_checkout(p)), None)


def launching_clone() -> tuple[Path, str] | None:
    """The clone this process was started from, and how that was seen (None outside any clone)."""
    for found, how in ((_venv_clone(), "its program is in that clone's environment link"),
                       (_cwd_clone(), "its working folder is in that clone")):
        if found is not None:
            return found.resolve(), how
    return None


def check_clone() -> None:
    """Raise OtherCloneError if this mlmd is a checkout other than the one the process was started from."""
    root = checkout_root()
    if root is None or os.environ.get(ALLOW_ENV):
        return
    root = root.resolve()
    chosen = [p for p in (_resolved(e) for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e)
              if p is not None and is_checkout(p)]
    if chosen:
        if root in chosen:
            return
        wanted, how = chosen[0], "PYTHONPATH names it"
    else:
        launched = launching_clone()
        if launched is None or launched[0] == root:
            return
        wanted, how = launched
    raise OtherCloneError(
        f"this process runs the mlmd code of {root}, but it was started from the clone {wanted} ({how}). "
        "Clones share one cached environment (their .venv links it) that holds an editable install of the clone "
        f"that last ran `make`. Fix: run `make env` in {wanted} (it points the shared environment back at that clone), "
        f"or run with PYTHONPATH={wanted} (the Makefile's targets do). {ALLOW_ENV}=1 skips this check."
    )
