"""The one progress table of `mlmd md` for the engines whose steps Python drives (ASE, OpenMM).

A title line, the column header (with the committee spread when the model is a committee), one row every
``log_every`` steps (step, time, potential and kinetic energy in eV, temperature, ms per step since the last
row) and the closing ``done:`` line. LAMMPS runs its own loop and prints its thermo output instead
(mlmd.engines.lammps.md).
"""

from __future__ import annotations

import time
from typing import Optional


class MDProgress:
    """Prints the title and the header at construction and starts the wall clock."""

    def __init__(self, title: str, timestep_fs: float, uncertainty: bool) -> None:
        self.timestep_fs = timestep_fs
        print(title)
        print(f"{'step':>8}{'time/ps':>10}{'Epot/eV':>16}{'Ekin/eV':>12}{'T/K':>9}{'ms/step':>10}"
              + (f"{'Estd/eV':>10}{'Fstd_max':>10}" if uncertainty else ""))
        self.t0 = time.perf_counter()

    def row(
        self, step: int, epot: float, ekin: float, temperature: float, ms_per_step: float,
        energy_std: Optional[float] = None, forces_std_max: Optional[float] = None,
    ) -> None:
        """One row; the spread columns when ``energy_std`` is given."""
        extra = f"{energy_std:>10.4f}{forces_std_max:>10.4f}" if energy_std is not None else ""
        print(
            f"{step:>8}{step * self.timestep_fs / 1000:>10.4f}{epot:>16.4f}{ekin:>12.4f}"
            f"{temperature:>9.1f}{ms_per_step:>10.1f}{extra}",
            flush=True,
        )

    def done(self, steps: int) -> float:
        """The closing line; returns the wall time (s) since the header."""
        wall = time.perf_counter() - self.t0
        print(f"done: {steps} steps in {wall:.1f} s ({wall / max(steps, 1) * 1000:.1f} ms/step)")
        return wall
