"""The one progress printer of `mlmd md`.

For the engines whose steps Python drives (ASE, OpenMM): a title line, the column header (with the committee
spread when the model is a committee), one row every ``log_every`` steps (step, time, potential and kinetic
energy in eV, temperature, ms per step since the last row) and the closing ``done:`` line. LAMMPS runs its own
loop and prints its thermo output; its closing ``done:`` line (lammps_done) is written here too.
With ``echo=False`` nothing is printed (benchmarks that only want the returned summary).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional


class MDProgress:
    """Prints the title and the header at construction and starts the wall clock."""

    def __init__(self, title: str, timestep_fs: float, uncertainty: bool, echo: bool = True) -> None:
        self.timestep_fs = timestep_fs
        self.echo = echo
        self._print(title)
        self._print(f"{'step':>8}{'time/ps':>10}{'Epot/eV':>16}{'Ekin/eV':>12}{'T/K':>9}{'ms/step':>10}"
                    + (f"{'Estd/eV':>10}{'Fstd_max':>10}" if uncertainty else ""))
        self.t0 = time.perf_counter()

    def _print(self, line: str) -> None:
        if self.echo:
            print(line, flush=True)

    def row(
        self, step: int, epot: float, ekin: float, temperature: float, ms_per_step: float,
        energy_std: Optional[float] = None, forces_std_max: Optional[float] = None,
    ) -> None:
        """One row; the spread columns when ``energy_std`` is given."""
        extra = f"{energy_std:>10.4f}{forces_std_max:>10.4f}" if energy_std is not None else ""
        self._print(
            f"{step:>8}{step * self.timestep_fs / 1000:>10.4f}{epot:>16.4f}{ekin:>12.4f}"
            f"{temperature:>9.1f}{ms_per_step:>10.1f}{extra}"
        )

    def done(self, steps: int) -> float:
        """The closing line; returns the wall time (s) since the header."""
        wall = time.perf_counter() - self.t0
        self._print(f"done: {steps} steps in {wall:.1f} s ({wall / max(steps, 1) * 1000:.1f} ms/step)")
        return wall


def lammps_done(summary: dict[str, float], threads: int, log: Path) -> str:
    """The closing line of a LAMMPS run from its log's summary (mlmd.engines.lammps.md_summary)."""
    line = (
        f"done: {int(summary['steps'])} steps, {int(summary['atoms'])} atoms on {int(summary['ranks'])} rank(s) "
        f"x {threads} thread(s): {summary['steps_per_s']:.3g} steps/s ({summary['ms_per_step']:.1f} ms/step)"
    )
    if "outside_model_share" in summary:
        line += (
            f"; {summary['outside_model_share']:.1%} of the time outside the model "
            f"(plugin bridge {summary['bridge_share']:.1%})"
        )
    if "max_force_std" in summary:
        line += (
            f"; committee spread: energy std up to {summary['max_energy_std']:.3g} eV, per-atom force std up "
            f"to {summary['max_force_std']:.3g} eV/Å"
        )
    return line + f"; log: {log}"
