"""The dispatch of an MDRequest to its engine's runner (each `run(request) -> dict[str, float]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mlmd.md.request import DEFAULT_MODEL, MDRequest, unknown_engine


def runner_of(engine: str) -> Callable[[MDRequest], dict[str, float]]:
    """The engine's run(request), imported only when asked for (OpenMM and LAMMPS are heavy imports)."""
    if engine == "ase":
        from mlmd.md.ase_md import run
    elif engine == "openmm":
        from mlmd.md.openmm_md import run
    elif engine == "lammps":
        from mlmd.md.lammps_md import run
    else:
        raise unknown_engine(engine)
    return run


def run(request: MDRequest) -> dict[str, float]:
    """Check the request (ValueError before anything starts), then run it in its engine; returns the run's
    summary (ms per step and the final temperature at least; the engine adds what it measures)."""
    request.check()
    return runner_of(request.engine)(request)


def run_md(model: str | Path = DEFAULT_MODEL, engine: str = "ase", **options: Any) -> dict[str, float]:
    """run(MDRequest(model, engine, **options)): the same request as keyword arguments (MDRequest's fields)."""
    return run(MDRequest(model=model, engine=engine, **options))
