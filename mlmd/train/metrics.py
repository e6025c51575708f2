"""Error metrics accumulated over a data set (MAE and RMSE per quantity)."""

from __future__ import annotations

import math

import torch

from mlmd import keys as K

# units in which metrics are reported
METRIC_UNITS = {"energy_per_atom": "meV/atom", "forces": "meV/Å", "stress": "meV/Å³", "charges": "me"}


class ErrorAccumulator:
    """Sums of absolute and squared errors. Missing labels are masked out by add_batch (labels themselves are
    finite: the reader refuses NaN/inf); a non-finite error (a model that gives NaN) is kept, so the MAE and RMSE
    then read NaN or inf rather than leaving it out."""

    def __init__(self) -> None:
        self.abs: dict[str, float] = {}
        self.sq: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, name: str, diff: torch.Tensor) -> None:
        diff = diff.detach().double().reshape(-1)
        if diff.numel() == 0:
            return
        self.abs[name] = self.abs.get(name, 0.0) + float(diff.abs().sum())
        self.sq[name] = self.sq.get(name, 0.0) + float((diff**2).sum())
        self.count[name] = self.count.get(name, 0) + diff.numel()

    def add_batch(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        n = batch[K.N_ATOMS].to(pred[K.ENERGY].dtype)
        has_energy = torch.isfinite(batch[K.ENERGY])  # structures without an energy label carry NaN there
        self.add("energy_per_atom", ((pred[K.ENERGY] - batch[K.ENERGY]) / n * 1000.0)[has_energy])
        if K.FORCES in pred:
            mask = batch["has_forces"]
            self.add("forces", (pred[K.FORCES] - batch[K.FORCES])[mask] * 1000.0)
        if K.STRESS in pred and bool(batch["has_stress"].any()):
            self.add("stress", (pred[K.STRESS] - batch[K.STRESS])[batch["has_stress"]] * 1000.0)
        if K.CHARGES in pred and bool(batch["has_charges"].any()):
            self.add("charges", (pred[K.CHARGES] - batch[K.CHARGES])[batch["has_charges"]] * 1000.0)

    def results(self) -> dict[str, float]:
        out = {}
        for name, c in self.count.items():
            out[f"{name}_mae"] = self.abs[name] / c
            out[f"{name}_rmse"] = math.sqrt(self.sq[name] / c)
        return out
