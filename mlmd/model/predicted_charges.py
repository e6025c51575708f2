"""Charges predicted by the network from each atom's environment, with the total charge conserved exactly.

The charge head (``EquivariantNetwork(charge_head=True)``) reads the same invariant node features as the energy
readout and gives two scalars per atom, a and b. With per-species offsets q0 (the fitted fixed charges, so an
untrained head starts from the fixed-charge model) and a fixed output scale c (``CHARGE_SCALE``):

    raw charge    q~_i = q0[s_i] + c a_i                    (e)
    softness      w_i  = softplus(b_i) + w_min              (> 0: an inverse hardness)
    charges       q_i  = q~_i - w_i (sum_j q~_j - Q) / sum_j w_j        (sum_i q_i = Q exactly)

Why this correction. It is the closed-form charge equilibration with a diagonal hardness: minimising
sum_i (chi_i q_i + q_i^2 / (2 w_i)) under sum_i q_i = Q gives exactly q_i = q~_i - w_i lambda with q~_i = -w_i chi_i,
i.e. the network predicts electronegativities (through q~) and hardnesses (through w), and the excess charge
goes where atoms are softest. Uniform w gives the plain neutrality correction q~_i - (sum q~ - Q)/N (PhysNet,
SpookyNet); learned w lets a charged system place its excess charge by chemistry rather than evenly. Full
charge equilibration with the Coulomb kernel in the hardness matrix (4G-HDNNP) was not chosen: it needs an
N x N (periodic: Ewald) linear solve at every step and its derivative, O(N^3) or iterative, for a non-local
charge transfer that neutral bulk training data (the water set) cannot teach. Here the cost is O(N), each q~_i
and w_i is local, and only the single constraint couples the atoms (through two sums).

The energy is that of the short-range model plus the Coulomb energy of q(R) by the existing Ewald/PME/direct
machinery (``Electrostatics``). Everything is differentiable, so forces and stress include dq/dR by autograd,
and the whole model trains end to end from energies and forces (and, optionally, reference charges).
``Q`` is the structure's total charge (ASE ``atoms.info["charge"]``, 0 when absent). A periodic cell with
Q != 0 is refused unless the electrostatics were built with ``neutralizing_background=True``.
"""

from typing import Any, Dict, Optional

import torch
from torch import nn

from mlmd.model.electrostatics import Electrostatics, enforce_total_charge

CHARGE_SCALE = 0.1  # e per unit of head output: Adam's first steps move charges by ~0.01 e, not ~0.1 e
MIN_SOFTNESS = 1e-3  # keeps sum_j w_j away from zero


def charges_from_outputs(
    charge_offsets: torch.Tensor, species: torch.Tensor, outputs: torch.Tensor, charge_scale: float,
    min_softness: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw charges q~ [N], softness w [N]) from the per-species offsets [S] and the head's outputs [N, 2]."""
    raw = charge_offsets[species] + charge_scale * outputs[:, 0]
    softness = torch.nn.functional.softplus(outputs[:, 1]) + min_softness
    return raw, softness


class PredictedCoulombTerm(nn.Module):
    """Coulomb energy of network-predicted charges (see the module docstring).

    conserve(raw, softness, total_charge, batch) -> charges summing to the total charge of each structure;
    forward(positions [N,3], cell [3,3], pbc [3], charges [N]) -> per-atom energies [N] of one structure;
    batch_energies(...) does the same for a training batch, structure by structure.
    ``initial_charges`` {Z: q} are the per-species offsets the head starts from (recorded in the metadata).
    """

    __jit_ignored_attributes__ = ["initial_charges"]

    def __init__(self, initial_charges: Dict[int, float], **electrostatics_kwargs: Any) -> None:
        super().__init__()
        self.initial_charges = {int(z): float(q) for z, q in initial_charges.items()}
        self.coulomb = Electrostatics(**electrostatics_kwargs)
        # the correction makes sum q = Q up to rounding (float32: ~1e-7 N e); Q itself is checked here
        self.coulomb.charge_tolerance = max(self.coulomb.charge_tolerance, 1e-3)
        self.neutralizing_background: bool = self.coulomb.neutralizing_background

    def conserve(
        self, raw: torch.Tensor, softness: torch.Tensor, total_charge: torch.Tensor,
        batch: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return enforce_total_charge(raw, total_charge, batch, softness)

    def forward(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, charges: torch.Tensor,
        total_charge: float = 0.0,
    ) -> torch.Tensor:
        if bool(pbc.all()) and abs(total_charge) > 1e-9 and not self.neutralizing_background:
            raise ValueError(
                "a periodic cell with total charge " + str(total_charge) + " e: Ewald/PME need a neutral cell; "
                + "this model's electrostatics were built without a neutralising background"
            )
        return self.coulomb.atomic_energies(positions, cell, pbc, charges)

    @torch.jit.unused
    def batch_energies(
        self, positions: torch.Tensor, cells: torch.Tensor, pbc: torch.Tensor, charges: torch.Tensor,
        batch: torch.Tensor, total_charge: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom Coulomb energies of a batch: positions [N,3], cells [B,3,3], pbc [B,3], batch [N]."""
        out = torch.zeros_like(charges)
        for b in range(cells.shape[0]):
            idx = torch.nonzero(batch == b).squeeze(1)
            e = self.forward(positions[idx], cells[b], pbc[b], charges[idx], float(total_charge[b]))
            out = out.index_add(0, idx, e)
        return out

    @torch.jit.unused
    def metadata(self) -> dict[str, Any]:
        return {
            "mode": "predicted",
            "charge_model": "charge head on the short-range model's invariant node features; total charge "
            "conserved by hardness-weighted correction (diagonal charge equilibration)",
            "charge_scale": CHARGE_SCALE,
            "min_softness": MIN_SOFTNESS,
            "total_charge_source": "atoms.info['charge'] (0 when absent)",
            "initial_charges": {str(z): q for z, q in self.initial_charges.items()},
            **self.coulomb.metadata(),
        }
