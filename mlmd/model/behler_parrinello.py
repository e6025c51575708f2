"""Behler–Parrinello potentials: one feed-forward network per element on a hand-built descriptor (ACSF or SOAP).

E = sum_i E_i, E_i = scale * eps_i + shift[species_i], eps_i = NN_{species_i}((D_i - mean_s) / std_s), D_i the
descriptor of atom i (mlmd.model.acsf, mlmd.model.soap) standardised per element with statistics of the training set.
Forces are -dE/dR by autograd through the descriptor. The class keeps the interface of ShortRangePotential
(forward(species, edge_index, edge_vectors) -> per-atom energies; shifts, scale, hparams, atomic_numbers, r_cut,
network), so training, packaging and every engine treat it the same. The descriptor sees only neighbours
within r_cut: hparams["n_layers"] = 1, and the interaction range is r_cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mlmd import keys as K
from mlmd.model.acsf import ACSF, acsf_parameters
from mlmd.model.base import AtomicEnergyModel
from mlmd.model.properties import edge_vectors as make_edge_vectors
from mlmd.model.soap import SOAP

BP_KINDS = ("bp-acsf", "bp-soap")
ACTIVATIONS = ("silu", "tanh")


class ElementMLP(nn.Module):
    def __init__(self, n_in: int, hidden: list[int], activation: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [n_in] + list(hidden)
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers.append(nn.Linear(a, b))
            layers.append(nn.SiLU() if activation == "silu" else nn.Tanh())
        layers.append(nn.Linear(sizes[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class AtomicNetworks(nn.Module):
    """Descriptor -> per-element standardisation -> per-element MLP: graph -> eps [N]."""

    def __init__(self, n_species: int, descriptor: nn.Module, hidden: list[int], activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden layer sizes must be a non-empty list of positive integers, got {hidden}")
        self.n_species = int(n_species)
        self.descriptor = descriptor
        n_features = int(descriptor.n_features)
        self.n_features = n_features
        self.register_buffer("feature_mean", torch.zeros(n_species, n_features))
        self.register_buffer("feature_std", torch.ones(n_species, n_features))
        self.element_nets = nn.ModuleList([ElementMLP(n_features, hidden, activation) for _ in range(n_species)])

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> torch.Tensor:
        # n_mirrored (edge order: see AtomicEnergyModel.forward) is not used: the descriptors take the full list
        x = self.descriptor(species, edge_index, edge_vectors)
        x = (x - self.feature_mean[species]) / self.feature_std[species]
        out = torch.zeros(species.shape[0], dtype=x.dtype, device=x.device)
        for k, net in enumerate(self.element_nets):
            idx = torch.nonzero(species == k).squeeze(1)
            out = out.index_copy(0, idx, net(x[idx]))
        return out


class BehlerParrinelloPotential(AtomicEnergyModel):
    def __init__(
        self,
        atomic_numbers: list[int],
        r_cut: float,
        kind: str = "bp-acsf",
        hidden: list[int] | None = None,
        activation: str = "silu",
        descriptor: dict[str, Any] | None = None,
        n_layers: int = 1,
    ) -> None:
        super().__init__(atomic_numbers, r_cut)
        if kind not in BP_KINDS:
            raise ValueError(f"unknown Behler-Parrinello kind {kind!r}; known: {', '.join(BP_KINDS)}")
        if n_layers != 1:
            raise ValueError("a Behler-Parrinello model sees one shell of neighbours: n_layers must be 1")
        hidden = [int(h) for h in (hidden if hidden is not None else [64, 64])]
        desc = dict(descriptor or {})
        n_species = len(self.atomic_numbers)
        if kind == "bp-acsf":
            desc = _acsf_settings(self.r_cut, desc)
            module: nn.Module = ACSF(
                n_species, self.r_cut, desc["g2"], desc["g4"], desc["cutoff_function"], desc["envelope_p"]
            )
        else:
            desc = _soap_settings(desc)
            module = SOAP(
                n_species, self.r_cut, desc["n_max"], desc["l_max"], desc["sigma"], desc["weighting"], desc["poly_m"],
                desc["rbf"],
            )
            if module.cutoff != self.r_cut:
                raise ValueError(
                    "SOAP weighting 'none' cuts the density off hard (energies would jump as atoms cross the cutoff); "
                    "a potential needs weighting 'poly'"
                )
        self.hparams = {
            "kind": kind,
            "atomic_numbers": self.atomic_numbers,
            "r_cut": self.r_cut,
            "n_layers": 1,
            "hidden": hidden,
            "activation": activation,
            "descriptor": desc,
        }
        self.network = AtomicNetworks(n_species, module, hidden, activation)

    @torch.no_grad()
    def fit_input_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Per-element mean and standard deviation of every descriptor component over the given batches.

        Batches are the trainer's collated dicts (species, positions, cell, edge_index, edge_shifts, batch).
        A component that never varies for an element (for example an element pair absent from the data)
        keeps std 1, so it passes through unscaled.
        """
        net = self.network
        s = net.n_species
        dtype = net.feature_mean.dtype
        count = torch.zeros(s, dtype=torch.float64)
        total = torch.zeros(s, net.n_features, dtype=torch.float64)
        total_sq = torch.zeros(s, net.n_features, dtype=torch.float64)
        for b in batches:
            vec = make_edge_vectors(b[K.POSITIONS], b[K.CELL], b[K.EDGE_INDEX], b[K.EDGE_SHIFTS], b[K.BATCH])
            x = net.descriptor(b[K.SPECIES], b[K.EDGE_INDEX], vec.to(dtype)).to(torch.float64)
            sp = b[K.SPECIES]
            count += torch.bincount(sp, minlength=s).to(torch.float64)
            total.index_add_(0, sp, x)
            total_sq.index_add_(0, sp, x * x)
        n = count.clamp(min=1.0).unsqueeze(1)
        mean = total / n
        var = (total_sq / n - mean * mean).clamp(min=0.0)
        std = torch.sqrt(var)
        tiny = std <= 1e-6 * (mean.abs() + 1e-12)
        std = torch.where(tiny | (std == 0), torch.ones_like(std), std)
        net.feature_mean.copy_(mean.to(dtype))
        net.feature_std.copy_(std.to(dtype))


def _acsf_settings(r_cut: float, desc: dict[str, Any]) -> dict[str, Any]:
    known = {"cutoff_function", "envelope_p", "n_radial", "n_angular", "g2", "g4"}
    _check_keys(desc, known, "bp-acsf")
    auto = acsf_parameters(r_cut, int(desc.get("n_radial", 16)), int(desc.get("n_angular", 4)))
    g2 = [[float(v) for v in p] for p in (desc.get("g2") or auto["g2"])]
    g4 = [[float(v) for v in p] for p in (desc.get("g4") or auto["g4"])]
    return {
        "cutoff_function": str(desc.get("cutoff_function", "polynomial")),
        "envelope_p": int(desc.get("envelope_p", 6)),
        "g2": g2,
        "g4": g4,
    }


def _soap_settings(desc: dict[str, Any]) -> dict[str, Any]:
    known = {"n_max", "l_max", "sigma", "weighting", "poly_m", "rbf"}
    _check_keys(desc, known, "bp-soap")
    return {
        "n_max": int(desc.get("n_max", 6)),
        "l_max": int(desc.get("l_max", 4)),
        "sigma": float(desc.get("sigma", 0.5)),
        "weighting": str(desc.get("weighting", "poly")),
        "poly_m": int(desc.get("poly_m", 2)),
        "rbf": str(desc.get("rbf", "gto")),  # radial basis: gto or polynomial (DScribe's)
    }


def _check_keys(desc: dict[str, Any], known: set[str], kind: str) -> None:
    unknown = set(desc) - known
    if unknown:
        raise ValueError(f"unknown {kind} descriptor settings {sorted(unknown)}; known: {sorted(known)}")


def build_bp_potential(atomic_numbers: list[int], model_cfg: Any) -> BehlerParrinelloPotential:
    """From a ModelConfig whose kind is bp-acsf or bp-soap (settings in model_cfg.bp)."""
    bp = model_cfg.bp
    if model_cfg.kind == "bp-acsf":
        desc: dict[str, Any] = {
            "cutoff_function": bp.cutoff_function,
            "envelope_p": model_cfg.envelope_p,
            "n_radial": bp.n_radial,
            "n_angular": bp.n_angular,
            "g2": bp.g2,
            "g4": bp.g4,
        }
    else:
        desc = {"n_max": bp.n_max, "l_max": bp.l_max, "sigma": bp.sigma, "weighting": "poly", "poly_m": bp.poly_m,
                "rbf": bp.soap_rbf}
    return BehlerParrinelloPotential(
        atomic_numbers, model_cfg.r_cut, model_cfg.kind, list(bp.hidden), bp.activation, desc
    )
