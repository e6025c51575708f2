"""`mlmd evaluate`: a packaged model against labelled data: MAE/RMSE table and a parity plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlmd.data.structures import LABEL_CANDIDATES, DataError, describe_keys, read_structures


def evaluate_model_file(
    model: str | Path,
    data: str | Path,
    energy_key: str = "auto",
    forces_key: str = "auto",
    stress_key: str = "auto",
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Errors of a model file on labelled data; for a committee model also the calibration of its uncertainty
    (mlmd.calibration: Spearman rank correlation, miscalibration area, NLL scale; plot beside the parity plot).

    Label keys "auto" take the common names (see mlmd.data.structures.resolve_label_keys); data without any
    energy, force or stress label is refused naming the keys it has."""
    from mlmd.engines.ase import MLMDCalculator

    keys: dict[str, str | None] = {}
    structures = read_structures(data, energy_key, forces_key, stress_key, keys_out=keys)
    labelled = any(s.energy is not None or s.forces is not None or s.stress is not None for s in structures)
    if not labelled:
        raise DataError(
            f"{data}: no energy, force or stress labels to compare with (looked for "
            f"{', '.join(k for names in LABEL_CANDIDATES.values() for k in names)} where a key is auto); the "
            f"frames carry {describe_keys(data)}: name the labels with --energy-key, --forces-key, --stress-key"
        )
    calc = MLMDCalculator(model, domain="off")  # a data set, not an MD run: its frames are not steps
    committee = calc.card.has_uncertainty
    aleatoric: dict[str, list] = {"e_err": [], "e_std": []}
    spread: dict[str, list] = {"f_err": [], "f_std": [], "e_err": [], "e_std": []}
    pairs: dict[str, tuple[list, list]] = {
        "energy_per_atom": ([], []), "forces": ([], []), "stress": ([], []), "charges": ([], []),
    }
    for s in structures:
        atoms = s.to_atoms()
        atoms.calc = calc
        if s.energy is not None:
            pairs["energy_per_atom"][0].append(s.energy / s.n_atoms)
            pairs["energy_per_atom"][1].append(atoms.get_potential_energy() / s.n_atoms)
            if committee:
                spread["e_err"].append(atoms.get_potential_energy() - s.energy)
                spread["e_std"].append(calc.results["energy_std"])
            if calc.has_variance_head:
                aleatoric["e_err"].append(atoms.get_potential_energy() - s.energy)
                aleatoric["e_std"].append(calc.results["energy_std_aleatoric"])
        if s.forces is not None:
            pairs["forces"][0].append(s.forces.ravel())
            pairs["forces"][1].append(atoms.get_forces().ravel())
            if committee:
                spread["f_err"].append(atoms.get_forces() - s.forces)
                spread["f_std"].append(calc.results["forces_std"])
        if s.stress is not None:
            from ase.stress import voigt_6_to_full_3x3_stress

            pairs["stress"][0].append(s.stress.ravel())
            pairs["stress"][1].append(voigt_6_to_full_3x3_stress(atoms.get_stress()).ravel())
        if s.charges is not None and calc.predicts_charges:  # reference charges vs the model's predicted ones
            pairs["charges"][0].append(s.charges)
            pairs["charges"][1].append(atoms.get_charges())
    results: dict[str, Any] = {"n_structures": len(structures)}
    arrays = {}
    for name, (ref, pred) in pairs.items():
        if not ref:
            continue
        r = np.concatenate([np.atleast_1d(x) for x in ref]) * 1000
        p = np.concatenate([np.atleast_1d(x) for x in pred]) * 1000
        arrays[name] = (r, p)
        results[f"{name}_mae"] = float(np.mean(np.abs(p - r)))
        results[f"{name}_rmse"] = float(np.sqrt(np.mean((p - r) ** 2)))
    if plot:
        parity_plot(arrays, plot)
    if len(aleatoric["e_err"]) > 2:  # the variance head's energy sigma against the energy errors
        from mlmd.calibration import calibration_metrics

        cal = calibration_metrics(np.array(aleatoric["e_err"]), np.array(aleatoric["e_std"]))
        results.update({f"calibration_aleatoric_energy_{k}": v for k, v in cal.items()})
    if committee and spread["f_err"] and spread["e_err"]:
        from mlmd.calibration import committee_calibration, plot_calibration

        args = (np.concatenate(spread["f_err"]), np.concatenate(spread["f_std"]),
                np.array(spread["e_err"]), np.array(spread["e_std"]))
        results.update({f"calibration_{k}": v for k, v in committee_calibration(*args).items()})
        if plot:
            cal_plot = Path(plot).with_name(Path(plot).stem + "_calibration.png")
            plot_calibration(*args, cal_plot, title=f"{Path(model).name} on {Path(data).name}")
            results["calibration_plot"] = str(cal_plot)
    return results


def format_table(results: dict[str, Any]) -> str:
    from mlmd.train.metrics import METRIC_UNITS

    lines = [f"{'quantity':<18}{'MAE':>12}{'RMSE':>12}  unit", "-" * 52]
    for name, unit in METRIC_UNITS.items():
        if f"{name}_mae" in results:
            lines.append(f"{name:<18}{results[name + '_mae']:>12.3f}{results[name + '_rmse']:>12.3f}  {unit}")
    lines.append(f"({results['n_structures']} structures)")
    if "calibration_forces_spearman" in results:
        r = results
        lines.append(
            "uncertainty (committee): force components: Spearman {:.3f}, miscalibration area {:.3f}, "
            "NLL scale {:.2f}; per-atom Spearman {:.3f}; energies: Spearman {:.3f}, miscalibration area {:.3f}".format(
                r["calibration_forces_spearman"], r["calibration_forces_miscalibration_area"],
                r["calibration_forces_nll_scale"], r["calibration_forces_atom_spearman"],
                r["calibration_energy_spearman"], r["calibration_energy_miscalibration_area"],
            )
        )
    return "\n".join(lines)


def parity_plot(arrays: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlmd.train.metrics import METRIC_UNITS

    fig, axes = plt.subplots(1, len(arrays), figsize=(4.3 * len(arrays), 4.2), squeeze=False)
    for ax, (name, (r, p)) in zip(axes[0], arrays.items()):
        unit = METRIC_UNITS[name]
        if name == "energy_per_atom":  # absolute energies are far from zero: show them relative to the mean
            off = r.mean()
            r, p = r - off, p - off
            unit += " (minus mean)"
        ax.scatter(r, p, s=4, alpha=0.5)
        lo, hi = min(r.min(), p.min()), max(r.max(), p.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {name} ({unit})")
        ax.set_ylabel(f"mlmd {name}")
        ax.set_title(f"{name}: MAE {np.mean(np.abs(p - r)):.2f}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
