"""The composed short-range potential: species map, equivariant network, per-species shift and scale.

E_i = scale * eps_i + shift[species_i]; eps_i from the network. Everything here is TorchScript-compatible
and works on a graph (species, edge_index, edge_vectors), so training, packaging and every engine share it.
With ``charge_head=True`` the network also predicts per-atom charges (mlmd.model.predicted_charges), from the
same pass: ``energies_and_charges``.
"""

from __future__ import annotations

from typing import Any

import torch

from mlmd.model.base import AtomicEnergyModel
from mlmd.model.behler_parrinello import BP_KINDS, BehlerParrinelloPotential, build_bp_potential
from mlmd.model.equivariant import EquivariantNetwork
from mlmd.model.predicted_charges import CHARGE_SCALE, MIN_SOFTNESS, charges_from_outputs


class ShortRangePotential(AtomicEnergyModel):
    def __init__(self, atomic_numbers: list[int], r_cut: float, **network_kwargs: Any) -> None:
        super().__init__(atomic_numbers, r_cut)
        self.hparams = {"atomic_numbers": self.atomic_numbers, "r_cut": self.r_cut, **network_kwargs}
        self.network = EquivariantNetwork(len(atomic_numbers), r_cut, **network_kwargs)
        self.charge_scale: float = CHARGE_SCALE
        self.min_softness: float = MIN_SOFTNESS
        if network_kwargs.get("charge_head", False):
            # per-species charges the head starts from (the fitted fixed charges, set before training)
            self.register_buffer("charge_offsets", torch.zeros(len(self.atomic_numbers)))

    def energies_and_variances(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies (eV) and predicted per-atom variances (eV²) from one pass (aleatoric head)."""
        eps, log_var = self.network.energies_and_log_variances(species, edge_index, edge_vectors, n_mirrored)
        if log_var.shape[0] != eps.shape[0]:
            raise ValueError("this potential has no variance head (built with variance_head=False)")
        return eps * self.scale + self.shifts[species], torch.exp(log_var) * self.scale * self.scale

    def energies_and_charges(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-atom energies (eV), raw charges q~ (e) and softnesses w from one pass of the network.

        The raw charges do not yet sum to the total charge: PredictedCoulombTerm.conserve does that.
        """
        eps, outputs = self.network.energies_and_charge_outputs(species, edge_index, edge_vectors, n_mirrored)
        if outputs.shape[1] != 2:
            raise ValueError("this potential has no charge head (built with charge_head=False)")
        raw, softness = charges_from_outputs(
            self.charge_offsets, species, outputs, self.charge_scale, self.min_softness
        )
        return eps * self.scale + self.shifts[species], raw, softness


    # ---- layer by layer, for engines that exchange ghost features between layers (see
    # EquivariantNetwork.interaction_flat); `member` is 0 (the signature is shared with EnsemblePotential)

    def layer_widths(self, member: int) -> list[int]:
        self._only_member(member)
        return self.network.feature_widths()

    def layer_embed(self, member: int, species: torch.Tensor) -> torch.Tensor:
        self._only_member(member)
        return self.network.embed_flat(species)

    def layer_edges(
        self, member: int, edge_vectors: torch.Tensor, n_mirrored: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._only_member(member)
        return self.network.edge_features_flat(edge_vectors, n_mirrored)

    def layer_interaction(
        self, member: int, layer: int, h: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
        sh: torch.Tensor, radial: torch.Tensor, n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        self._only_member(member)
        return self.network.interaction_flat(layer, h, species, edge_index, sh, radial, n_mirrored, n_out)

    def layer_message_widths(self, member: int) -> list[int]:
        self._only_member(member)
        return self.network.message_widths()

    def layer_messages(
        self, member: int, layer: int, h: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor,
        radial: torch.Tensor, n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        self._only_member(member)
        return self.network.messages_flat(layer, h, edge_index, sh, radial, n_mirrored, n_out)

    def layer_update(
        self, member: int, layer: int, h: torch.Tensor, messages: torch.Tensor, species: torch.Tensor
    ) -> torch.Tensor:
        self._only_member(member)
        return self.network.update_flat(layer, h, messages, species)

    def layer_readout(self, member: int, h: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (eV) of the nodes whose last-layer features h are (species: theirs)."""
        self._only_member(member)
        return self.network.readout_flat(h) * self.scale + self.shifts[species]

    def _only_member(self, member: int) -> None:
        if member != 0:
            raise ValueError("a single model has no committee member " + str(member))


def build_potential(
    atomic_numbers: list[int], model_cfg: Any, avg_num_neighbors: float
) -> ShortRangePotential | BehlerParrinelloPotential:
    """From a ModelConfig (or anything with the same attributes)."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[model_cfg.dtype]
    lr = getattr(model_cfg, "long_range", None)
    charge_head = lr is not None and lr.electrostatics == "predicted"
    if charge_head and model_cfg.kind != "equivariant":
        raise ValueError(
            f"long_range.electrostatics 'predicted' needs model.kind 'equivariant' (its charge head reads the "
            f"network's node features); {model_cfg.kind!r} supports electrostatics 'fixed'"
        )
    if getattr(model_cfg, "variance_head", False) and model_cfg.kind != "equivariant":
        raise ValueError("model.variance_head needs model.kind 'equivariant' (it reads the network's node features)")
    if model_cfg.kind in BP_KINDS:
        return build_bp_potential(atomic_numbers, model_cfg).to(dtype)
    if model_cfg.kind != "equivariant":
        raise ValueError(f"unknown model kind {model_cfg.kind!r}; known: equivariant, {', '.join(BP_KINDS)}")
    pot = ShortRangePotential(
        atomic_numbers,
        model_cfg.r_cut,
        channels=model_cfg.channels,
        vector_channels=model_cfg.vector_channels,
        l_max=model_cfg.l_max,
        n_layers=model_cfg.n_layers,
        n_basis=model_cfg.n_basis,
        radial_hidden=model_cfg.radial_hidden,
        envelope_p=model_cfg.envelope_p,
        avg_num_neighbors=float(avg_num_neighbors),
        **({"charge_head": True} if charge_head else {}),
        **({"variance_head": True} if getattr(model_cfg, "variance_head", False) else {}),
    )
    return pot.to(dtype)


def potential_from_hparams(hparams: dict[str, Any]) -> ShortRangePotential | BehlerParrinelloPotential:
    if hparams.get("kind", "equivariant") in BP_KINDS:
        return BehlerParrinelloPotential(**hparams)
    kw = dict(hparams)
    return ShortRangePotential(kw.pop("atomic_numbers"), kw.pop("r_cut"), **kw)
