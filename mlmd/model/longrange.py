"""Long-range terms composed with the short-range model: E = E_short + E_elec + E_disp.

Each term maps (positions, cell, numbers, pbc) to per-atom energies (eV), differentiably, so forces and
stress of the sum come from the same autograd pass as the short-range part. Terms without trainable
parameters (fixed per-species charges, D3) are evaluated once on the training data and subtracted from the
labels: the short-range model learns what they leave, and nothing is counted twice. Predicted charges
(``PredictedCoulombTerm``, mlmd.model.predicted_charges) depend on the network's parameters: that term is
never subtracted, it is trained jointly with the short-range energy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mlmd import keys as K
from mlmd.model.dispersion import D3Dispersion
from mlmd.model.electrostatics import Electrostatics, FixedCharges
from mlmd.model.predicted_charges import PredictedCoulombTerm

ELECTROSTATICS_MODES = K.CHARGES_MODES


class CoulombTerm(nn.Module):
    """Fixed per-species charges with Ewald/PME (periodic) or the direct sum (molecules)."""

    def __init__(self, charges: dict[int, float], **electrostatics_kwargs: Any) -> None:
        super().__init__()
        self.charges = FixedCharges(charges)
        self.coulomb = Electrostatics(**electrostatics_kwargs)

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor):
        q = self.charges(numbers).to(positions.dtype)
        return self.coulomb.atomic_energies(positions, cell, pbc, q)

    @torch.jit.unused
    def metadata(self) -> dict[str, Any]:
        return {"mode": "fixed", "charges": {str(z): q for z, q in self.charges.charges.items()},
                **self.coulomb.metadata()}


class DispersionTerm(nn.Module):
    def __init__(self, **d3_kwargs: Any) -> None:
        super().__init__()
        self.d3 = D3Dispersion(**d3_kwargs)

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor):
        return self.d3.atomic_energies(positions, cell, numbers, pbc)

    @torch.jit.export
    def graph_energies(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.d3.graph_energies(numbers, edge_index, vectors, n_local, n_mirrored)

    @torch.jit.export
    def graph_tail(
        self, numbers: torch.Tensor, weights: torch.Tensor, weight_sums: torch.Tensor, volume: float
    ) -> torch.Tensor:
        return self.d3.graph_tail(numbers, weights, weight_sums, volume)

    @torch.jit.export
    def graph_cn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> torch.Tensor:
        return self.d3.graph_cn(numbers, edge_index, vectors, n_local, n_mirrored)

    @torch.jit.export
    def graph_energies_given_cn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, cn: torch.Tensor,
        n_mirrored: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.d3.graph_energies_given_cn(numbers, edge_index, vectors, n_local, cn, n_mirrored)

    @torch.jit.export
    def graph_energies_whole_pairs_given_cn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, cn: torch.Tensor,
        n_mirrored: int, ghost_pairs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.d3.graph_energies_whole_pairs_given_cn(numbers, edge_index, vectors, n_local, cn, n_mirrored,
                                                           ghost_pairs)

    @torch.jit.export
    def graph_cn_by_hand(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.d3.graph_cn_by_hand(numbers, edge_index, vectors, n_local, n_mirrored)

    @torch.jit.export
    def graph_whole_pairs_by_hand(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, n_mirrored: int,
        cn: torch.Tensor, ghost_pairs: torch.Tensor, weight_sums: torch.Tensor, volume: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.d3.graph_whole_pairs_by_hand(numbers, edge_index, vectors, n_local, n_mirrored, cn, ghost_pairs,
                                                 weight_sums, volume)

    @torch.jit.export
    def graph_three_body_energies(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, cn: torch.Tensor,
        atom_ids: torch.Tensor,
    ) -> torch.Tensor:
        return self.d3.graph_three_body_energies(numbers, edge_index, vectors, n_local, cn, atom_ids)

    @torch.jit.unused
    def metadata(self) -> dict[str, Any]:
        return {"kind": "d3bj", **self.d3.metadata()}


def fit_fixed_charges(structures: list, atomic_numbers: list[int]) -> dict[int, float]:
    """Per-species mean of reference charges, shifted so that the mean charge per atom is zero."""
    sums = {z: 0.0 for z in atomic_numbers}
    counts = {z: 0 for z in atomic_numbers}
    for s in structures:
        if s.charges is None:
            continue
        for z, q in zip(s.numbers, s.charges):
            sums[int(z)] += float(q)
            counts[int(z)] += 1
    if not any(counts.values()):
        raise ValueError("electrostatics.charges = 'fit' needs reference charges ('charges' per atom) in the data")
    missing = [z for z in atomic_numbers if counts[z] == 0]
    if missing:
        raise ValueError(f"no reference charges for Z={missing}: give them in electrostatics.charges")
    mean = {z: sums[z] / counts[z] for z in atomic_numbers}
    offset = sum(sums.values()) / sum(counts.values())
    return {z: mean[z] - offset for z in atomic_numbers}


def build_long_range(cfg: Any, atomic_numbers: list[int], structures: list | None = None) -> list[nn.Module]:
    """Terms from a LongRangeConfig (config.py)."""
    terms: list[nn.Module] = []
    if cfg.electrostatics not in ELECTROSTATICS_MODES:
        raise ValueError(
            f"long_range.electrostatics must be one of {', '.join(ELECTROSTATICS_MODES)}, got {cfg.electrostatics!r}"
        )
    if cfg.electrostatics != "none":
        # fixed: the charges; predicted: the per-species charges the network's charge head starts from
        if cfg.charges == "fit":
            charges = fit_fixed_charges(structures or [], atomic_numbers)
        else:
            from ase.data import atomic_numbers as z_of

            if not isinstance(cfg.charges, dict):
                raise ValueError(f"long_range.charges must be 'fit' or {{element: charge}}, got {cfg.charges!r}")
            charges = {int(z_of[k]) if not str(k).isdigit() else int(k): float(v) for k, v in cfg.charges.items()}
        kw: dict[str, Any] = {"accuracy": cfg.accuracy, "method": cfg.method}
        if cfg.coulomb_cutoff > 0:
            kw["r_cut"] = cfg.coulomb_cutoff
        if cfg.pme_assignment != "lagrange":
            kw["pme_assignment"] = cfg.pme_assignment
        if cfg.electrostatics == "fixed":
            terms.append(CoulombTerm(charges, **kw))
        else:
            missing = [z for z in atomic_numbers if z not in charges]
            if missing:
                raise ValueError(f"long_range.charges gives no initial charge for Z={missing}")
            terms.append(PredictedCoulombTerm(charges, **kw))
    if cfg.dispersion not in ("none", "d3bj"):
        raise ValueError(f"long_range.dispersion must be none or d3bj, got {cfg.dispersion!r}")
    if cfg.dispersion == "d3bj":
        kw = {"atomic_numbers": atomic_numbers, "functional": cfg.functional, "three_body": cfg.three_body}
        if cfg.d3_cutoff > 0:
            kw["cutoff"] = cfg.d3_cutoff
            kw["cutoff_cn"] = cfg.d3_cutoff_cn if cfg.d3_cutoff_cn > 0 else min(cfg.d3_cutoff, 21.167)
            kw["smooth_width"] = cfg.d3_smooth_width
            kw["tail_correction"] = cfg.d3_tail_correction
        terms.append(DispersionTerm(**kw))
    return terms


def long_range_metadata(terms: list[nn.Module]) -> dict[str, Any]:
    meta: dict[str, Any] = {"electrostatics": None, "dispersion": None}
    for t in terms:
        if isinstance(t, (CoulombTerm, PredictedCoulombTerm)):
            meta["electrostatics"] = t.metadata()
        elif isinstance(t, DispersionTerm):
            meta["dispersion"] = t.metadata()
    return meta


def split_terms(terms: list[nn.Module]) -> tuple[PredictedCoulombTerm | None, list[nn.Module]]:
    """(the predicted-charge term or None, the terms with fixed parameters)."""
    predicted = [t for t in terms if isinstance(t, PredictedCoulombTerm)]
    if len(predicted) > 1:
        raise ValueError("more than one predicted-charge electrostatics term")
    return (predicted[0] if predicted else None), [t for t in terms if not isinstance(t, PredictedCoulombTerm)]


def long_range_labels(terms: list[nn.Module], s: Any) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces and stress (ASE convention) of the long-range terms for one structure (float64)."""
    if split_terms(terms)[0] is not None:
        raise ValueError("predicted-charge electrostatics depend on the network: they cannot be subtracted from labels")
    pos = torch.tensor(s.positions, dtype=torch.float64, requires_grad=True)
    periodic = bool(np.all(s.pbc))
    cell0 = torch.tensor(s.cell, dtype=torch.float64)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=periodic)
    sym = 0.5 * (strain + strain.T)
    p = pos + pos @ sym
    c = cell0 + cell0 @ sym
    numbers = torch.tensor(s.numbers)
    pbc = torch.tensor(np.asarray(s.pbc, dtype=bool))
    e = sum(t.double()(p, c, numbers, pbc).sum() for t in terms)
    inputs = [pos, strain] if periodic else [pos]
    grads = torch.autograd.grad(e, inputs)
    stress = (grads[1] / abs(float(torch.linalg.det(cell0)))).numpy() if periodic else None
    return float(e.detach()), -grads[0].numpy(), stress


def subtract_long_range(terms: list[nn.Module], structures: list) -> list:
    """Copies of the structures whose labels have the long-range energy, forces and stress removed."""
    import dataclasses

    out = []
    for s in structures:
        e, f, st = long_range_labels(terms, s)
        out.append(dataclasses.replace(
            s,
            energy=None if s.energy is None else s.energy - e,
            forces=None if s.forces is None else s.forces - f,
            stress=None if s.stress is None or st is None else s.stress - st,
        ))
    return out
