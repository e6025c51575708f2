"""The training data as the trainer sees it: labels checked against the loss weights, per-species energy shifts
and the force scale fitted, graphs cached and batched (Dataset), and a model evaluated on it (the energy
assembly the packaged model serves, without the fixed long-range terms, which are subtracted from the labels).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mlmd.config import Config
from mlmd.data.graph import GraphCache, collate
from mlmd.data.structures import Structure
from mlmd.model.assembly import EnergyAssembly
from mlmd.train.metrics import ErrorAccumulator


class TrainingError(ValueError):
    """Training that cannot go on and produce a usable model (a non-finite loss, missing labels)."""


def z_to_species_table(atomic_numbers: list[int]) -> np.ndarray:
    """[119] model species index of each atomic number (-1 for elements the model does not know)."""
    table = np.full(119, -1, dtype=np.int64)
    for k, z in enumerate(atomic_numbers):
        table[z] = k
    return table


def fit_energy_shift_scale(structures: list[Structure], atomic_numbers: list[int]) -> tuple[np.ndarray, float]:
    """Per-species energy shifts by least squares on E = sum_s n_s e_s; scale = RMS of force components."""
    idx = {z: k for k, z in enumerate(atomic_numbers)}
    rows, e = [], []
    for s in structures:
        if s.energy is None:
            continue
        counts = np.zeros(len(atomic_numbers))
        for z in s.numbers:
            counts[idx[int(z)]] += 1
        rows.append(counts)
        e.append(s.energy)
    shifts = np.zeros(len(atomic_numbers))
    if rows:
        a = np.array(rows)
        # small ridge: compositions of one data set are often collinear (water is always H2O)
        lam = 1e-8 * max(len(rows), 1)
        shifts = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ np.array(e))
    forces = [s.forces for s in structures if s.forces is not None]
    scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else 1.0
    if not math.isfinite(scale) or scale < 1e-6:
        scale = 1.0
    return shifts, scale


def check_labels(structures: list[Structure], label_keys: dict[str, str | None], cfg: Config, path: str) -> None:
    """Refuse, before any training, data that lacks a label the loss weights need, naming what the file has and
    the config key to set (data.*_key, or the weight to set to 0)."""
    from mlmd.data.structures import AUTO, LABEL_CANDIDATES, describe_keys

    tc = cfg.train
    if tc.energy_weight <= 0 and tc.forces_weight <= 0 and tc.stress_weight <= 0 and tc.charges_weight <= 0:
        raise TrainingError("train.energy_weight, forces_weight, stress_weight and charges_weight are all 0: "
                            "nothing to train on")
    need = [("energy", tc.energy_weight, any(s.energy is not None for s in structures)),
            ("forces", tc.forces_weight, any(s.forces is not None for s in structures)),
            ("charges", tc.charges_weight, any(s.charges is not None for s in structures))]
    if any(bool(s.pbc.all()) for s in structures):  # stress only exists for fully periodic structures
        need.append(("stress", tc.stress_weight, any(s.stress is not None for s in structures)))
    for label, weight, present in need:
        if weight > 0 and not present:
            key = getattr(cfg.data, f"{label}_key")
            looked = (f"looked for {', '.join(LABEL_CANDIDATES[label])} (data.{label}_key: auto)" if key == AUTO
                      else f"data.{label}_key is '{key}'")
            raise TrainingError(
                f"{path}: no {label} labels, but train.{label}_weight is {weight:g} ({looked}); the frames carry "
                f"{describe_keys(path)}. Set data.{label}_key to the name of the {label} label, or "
                f"train.{label}_weight=0 to train without {label}"
            )
    found = ", ".join(f"{k} from '{v}'" for k, v in label_keys.items() if v) or "none"
    print(f"labels: {found}")


def check_label_magnitudes(structures: list[Structure], label_keys: dict[str, str | None], dtype: torch.dtype,
                           path: str) -> None:
    """Refuse, before any training, a label so large that its squared error overflows the training dtype (the
    reader takes every finite number; a loss of inf would stop training at its first step with no pointer to the
    data). The bound leaves 10^8 of room for the loss weights and the sums over a batch."""
    limit = math.sqrt(torch.finfo(dtype).max) * 1e-4
    for k, s in enumerate(structures):
        for label in ("energy", "forces", "stress"):
            value = getattr(s, label)
            if value is None:
                continue
            largest = float(np.max(np.abs(value)))
            if largest > limit:
                raise TrainingError(
                    f"{path} frame {k}: {label} '{label_keys.get(label) or label}' holds {largest:.3g}, too large "
                    f"for training in {str(dtype).removeprefix('torch.')} (its squared error would overflow; the "
                    f"limit is {limit:.3g}): an unphysical label, or one in other units than eV and Å"
                )


def predict_batch(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], stress: bool, create_graph: bool,
    charge_term: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The potential (plus the predicted-charge Coulomb term, trained jointly) on a batch: the energy assembly the
    packaged model serves, without the fixed long-range terms (subtracted from the labels)."""
    return EnergyAssembly(model, [charge_term] if charge_term is not None else []).batch_properties(
        batch, True, stress, create_graph
    )


class Dataset:
    """Structures with their cached graphs, batched on demand."""

    def __init__(self, structures: list[Structure], r_cut: float, atomic_numbers: list[int], dtype: torch.dtype):
        self.graphs = GraphCache(structures, r_cut)
        self.table = z_to_species_table(atomic_numbers)
        self.dtype = dtype
        unknown = {int(z) for s in structures for z in s.numbers} - set(atomic_numbers)
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in sorted(unknown))
            raise ValueError(f"data contains elements the model does not know: {names}")

    def __len__(self) -> int:
        return len(self.graphs)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None):
        order = np.arange(len(self)) if rng is None else rng.permutation(len(self))
        for k in range(0, len(order), batch_size):
            sel = order[k : k + batch_size]
            yield collate(
                [self.graphs.structures[i] for i in sel], [self.graphs.edges[i] for i in sel], self.table, self.dtype
            )

    @property
    def has_stress(self) -> bool:
        return any(s.stress is not None for s in self.graphs.structures)


def evaluate_dataset(
    model: torch.nn.Module, data: Dataset, batch_size: int = 4, charge_term: torch.nn.Module | None = None
) -> dict[str, float]:
    acc = ErrorAccumulator()
    for batch in data.batches(batch_size):
        pred = predict_batch(model, batch, stress=data.has_stress, create_graph=False, charge_term=charge_term)
        acc.add_batch(pred, batch)
    return acc.results()
