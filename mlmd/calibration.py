"""How well a committee's uncertainty ranks and sizes its real errors.

- Spearman rank correlation between predicted spread and actual error (does it point at the bad atoms?);
- calibration curve: for each confidence level p, the fraction of errors within the Gaussian interval
  ±z_p σ (z_p = Φ⁻¹((1+p)/2)); a calibrated model lies on the diagonal; the miscalibration area is the mean
  |observed − expected| over p in (0, 1);
- the scale s that makes σ calibrated in the Gaussian likelihood sense: s² = mean(err² / σ²).
Forces are compared per Cartesian component, with σ_component = forces_std / √3 (forces_std is the per-atom
RMS over the three components); energies per structure with the total-energy spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LEVELS = np.linspace(0.01, 0.99, 99)


def calibration_curve(errors: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import norm

    errors, sigma = np.abs(np.ravel(errors)), np.maximum(np.ravel(sigma), 1e-300)
    z = norm.ppf((1 + LEVELS) / 2)
    observed = np.array([np.mean(errors <= zk * sigma) for zk in z])
    return LEVELS, observed


def calibration_metrics(errors: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    errors, sigma = np.abs(np.ravel(errors)), np.ravel(sigma)
    expected, observed = calibration_curve(errors, sigma)
    rho = spearmanr(sigma, errors).statistic if len(errors) > 2 else float("nan")
    safe = np.maximum(sigma, 1e-300)
    return {
        "spearman": float(rho),
        "miscalibration_area": float(np.mean(np.abs(observed - expected))),
        "nll_scale": float(np.sqrt(np.mean((errors / safe) ** 2))),
        "mean_sigma": float(np.mean(sigma)),
        "mean_abs_error": float(np.mean(errors)),
    }


def committee_calibration(
    force_errors: np.ndarray, forces_std: np.ndarray, energy_errors: np.ndarray, energy_std: np.ndarray
) -> dict[str, Any]:
    """force_errors [n_atoms_total, 3], forces_std [n_atoms_total]; energy arrays per structure."""
    f_sigma = np.repeat(np.asarray(forces_std)[:, None] / np.sqrt(3.0), 3, axis=1)
    out = {f"forces_{k}": v for k, v in calibration_metrics(force_errors, f_sigma).items()}
    # per-atom ranking: is the atom with the larger spread the one with the larger error?
    atom_err = np.linalg.norm(np.asarray(force_errors).reshape(-1, 3), axis=1)
    out["forces_atom_spearman"] = calibration_metrics(atom_err, forces_std)["spearman"]
    out.update({f"energy_{k}": v for k, v in calibration_metrics(energy_errors, energy_std).items()})
    return out


def plot_calibration(
    force_errors: np.ndarray, forces_std: np.ndarray, energy_errors: np.ndarray, energy_std: np.ndarray,
    path: str | Path, title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f_sigma = np.repeat(np.asarray(forces_std)[:, None] / np.sqrt(3.0), 3, axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for sigma, err, name in ((f_sigma, force_errors, "force components"), (energy_std, energy_errors, "energies")):
        exp, obs = calibration_curve(err, sigma)
        axes[0].plot(exp, obs, label=name)
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[0].set_xlabel("expected fraction within ±z σ")
    axes[0].set_ylabel("observed fraction")
    axes[0].set_title("calibration")
    axes[0].legend()
    atom_err = np.linalg.norm(np.asarray(force_errors).reshape(-1, 3), axis=1)
    axes[1].loglog(forces_std * 1000, atom_err * 1000, ".", ms=2, alpha=0.4)
    lim = [max(1e-3, min(forces_std.min(), atom_err.min()) * 1000), max(forces_std.max(), atom_err.max()) * 1000]
    axes[1].plot(lim, lim, "k--", lw=0.8)
    axes[1].set_xlabel("per-atom force spread (meV/Å)")
    axes[1].set_ylabel("per-atom force error |ΔF| (meV/Å)")
    axes[2].loglog(np.abs(energy_std) * 1000, np.abs(energy_errors) * 1000, "o", ms=4)
    axes[2].set_xlabel("energy spread (meV)")
    axes[2].set_ylabel("|energy error| (meV)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
