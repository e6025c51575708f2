"""Weighted loss on energy per atom, forces, stress and (predicted) per-atom charges (mean squared errors)."""

from __future__ import annotations

import torch

from mlmd import keys as K

# stress enters in units of 0.01 eV/Å^3 (1.6 GPa), which puts its squared error on the scale of the others
STRESS_UNIT = 0.01


def weighted_loss(
    pred: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    energy_weight: float,
    forces_weight: float,
    stress_weight: float,
    charges_weight: float = 0.0,
) -> torch.Tensor:
    n = batch[K.N_ATOMS].to(pred[K.ENERGY].dtype)
    e_ref = batch[K.ENERGY]
    e_mask = torch.isfinite(e_ref)
    loss = pred[K.ENERGY].new_zeros(())
    if bool(e_mask.any()):
        loss = loss + energy_weight * (((pred[K.ENERGY] - e_ref) / n)[e_mask] ** 2).mean()
    if forces_weight > 0 and K.FORCES in pred and bool(batch["has_forces"].any()):
        m = batch["has_forces"]
        loss = loss + forces_weight * ((pred[K.FORCES] - batch[K.FORCES])[m] ** 2).mean()
    if stress_weight > 0 and K.STRESS in pred and bool(batch["has_stress"].any()):
        m = batch["has_stress"]
        d = (pred[K.STRESS] - batch[K.STRESS])[m] / STRESS_UNIT
        loss = loss + stress_weight * (d**2).mean()
    if charges_weight > 0 and K.CHARGES in pred and bool(batch["has_charges"].any()):
        m = batch["has_charges"]
        loss = loss + charges_weight * ((pred[K.CHARGES] - batch[K.CHARGES])[m] ** 2).mean()
    return loss


def energy_nll(
    energy: torch.Tensor, reference: torch.Tensor, variance: torch.Tensor, n_atoms: torch.Tensor
) -> torch.Tensor:
    """Gaussian negative log-likelihood of the per-atom energy errors under the predicted variance
    (structure variance = sum of the per-atom variances, independent atoms), constant dropped. Pass the
    energies detached so the head learns the size of the residuals without pulling the fit of the mean."""
    n = n_atoms.to(energy.dtype)
    mask = torch.isfinite(reference)
    err = (energy - reference) / n
    var = variance / (n * n) + 1e-12
    return (0.5 * (torch.log(var) + err * err / var))[mask].mean()
