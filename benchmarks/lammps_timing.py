"""Shared by the LAMMPS cost benchmarks: run one input and read two thermo columns at the last step plus the CPU
seconds of the whole LAMMPS run (every rank: the children's rusage)."""

from __future__ import annotations

import re
import resource
from pathlib import Path


def run_and_read(script_text: str, workdir: Path, name: str, ranks: int, steps: int) -> tuple[float, float, float]:
    """Write `script_text` as workdir/name, run it on `ranks` MPI ranks, and return the two thermo columns printed
    after `steps` steps (the script's `thermo_style custom step A B`) and the CPU s of the run."""
    from mlmd.engines.lammps import run_lammps

    script = workdir / name
    script.write_text(script_text)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = run_lammps(script, workdir, nprocs=ranks, in_process=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    last = re.findall(rf"^\s*{steps}\s+(\S+)\s+(\S+)\s*$", log, re.M)
    return float(last[-1][0]), float(last[-1][1]), cpu
