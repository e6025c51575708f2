"""Uncertainty-gated MD, shared by the engines: log the committee spread, harvest uncertain frames, stop.

The gate looks at the largest per-atom force spread (eV/Å) of a committee model: forces are what drive the
dynamics and the per-atom maximum finds one bad environment in a large box, where the total-energy spread
would be diluted. Frames above the threshold are appended to an extxyz file (positions, cell, and the spread
as per-atom and info fields) ready for labelling; with stop=True the run ends with UncertaintyExceeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np


class UncertaintyExceeded(RuntimeError):
    """The model's committee disagreement crossed the gate's threshold (stop=True)."""

    def __init__(self, step: int, atom: int, value: float, threshold: float) -> None:
        self.step, self.atom, self.value, self.threshold = step, atom, value, threshold
        super().__init__(
            f"step {step}: force uncertainty {value:.3f} eV/Å on atom {atom} exceeds the threshold "
            f"{threshold:.3f} eV/Å; the model is outside its training domain here (stopped as requested)"
        )


@dataclass
class UncertaintyGate:
    threshold: float = float("inf")  # eV/Å on the per-atom force spread; inf: log only
    harvest: str | Path | None = None  # extxyz file that frames above the threshold are appended to
    stop: bool = False
    log: str | Path | None = None  # CSV: step, time_ps, energy_std, max/mean force std
    timestep_fs: float = 0.5
    n_harvested: int = 0
    records: list[dict[str, float]] = field(default_factory=list)
    _log: TextIO | None = None

    def __post_init__(self) -> None:
        if self.harvest is not None:
            Path(self.harvest).unlink(missing_ok=True)  # a fresh run writes a fresh file
        if self.log is not None:
            self._log = open(self.log, "w")
            self._log.write("step,time_ps,energy_std_eV,max_force_std_eV_A,mean_force_std_eV_A,harvested\n")

    def check(self, step: int, atoms: Any, energy_std: float, forces_std: np.ndarray) -> bool:
        """Record one evaluation; returns True if the frame was above the threshold (and harvested)."""
        forces_std = np.asarray(forces_std, dtype=float)
        k = int(np.argmax(forces_std)) if forces_std.size else 0
        worst = float(forces_std[k]) if forces_std.size else 0.0
        above = worst > self.threshold
        rec = {"step": step, "energy_std": float(energy_std), "max_force_std": worst,
               "mean_force_std": float(forces_std.mean()) if forces_std.size else 0.0, "harvested": int(above)}
        self.records.append(rec)
        if self._log is not None:
            self._log.write(
                f"{step},{step * self.timestep_fs / 1000:.6f},{rec['energy_std']:.10g},{worst:.10g},"
                f"{rec['mean_force_std']:.10g},{int(above)}\n"
            )
            self._log.flush()
        if above and self.harvest is not None:
            self._write(step, atoms, energy_std, forces_std)
        if above and self.stop:
            self.close()
            raise UncertaintyExceeded(step, k, worst, self.threshold)
        return above

    def _write(self, step: int, atoms: Any, energy_std: float, forces_std: np.ndarray) -> None:
        import ase.io
        from ase import Atoms

        frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        frame.info.update({"md_step": int(step), "energy_std": float(energy_std),
                           "max_force_std": float(np.max(forces_std))})
        frame.arrays["force_std"] = np.asarray(forces_std, dtype=float)
        ase.io.write(str(self.harvest), frame, format="extxyz", append=True)
        self.n_harvested += 1

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def committee_uncertainty(module: Any, card: Any, atoms: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """Energy/force spread of a packaged committee model (a loaded TorchScript module and its
    mlmd.deploy.card.ModelCard) for ASE atoms."""
    import torch

    if not card.has_uncertainty:
        raise ValueError("this model is not a committee model: train it with `mlmd train --ensemble K`")
    dtype = dtype or next(iter(module.parameters())).dtype
    pbc = np.asarray(atoms.pbc, dtype=bool)
    out = module.uncertainty(
        torch.as_tensor(np.asarray(atoms.positions), dtype=dtype),
        torch.as_tensor(np.asarray(atoms.cell.array), dtype=dtype),
        torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.long),
        torch.as_tensor(pbc),
        False,
    )
    return {k: v.double().numpy() for k, v in out.items()}
