"""Charges predicted by the network from each atom's environment, with the total charge conserved exactly.

The charge head (``EquivariantNetwork(charge_head=True)``, ``ChargeHead``) reads the same invariant node features
as the energy readout. It predicts an electronegativity-like scalar chi_i and a softness logit b_i per atom, and
moves charge between neighbours within the cutoff down the chi gradient. With per-species offsets q0 (the
fitted fixed charges, so an untrained head starts from the fixed-charge model) and a fixed output scale c:

    local transfer   dq_i = sum_j kappa(r_ij) (chi_j - chi_i)      (antisymmetric: sum_i dq_i = 0)
    raw charge       q~_i = q0[s_i] + c dq_i
    softness         w_i  = softplus(b_i) + w_min                   (> 0: an inverse hardness)
    charges          q_i  = q~_i - w_i (sum_j q~_j - Q) / sum_j w_j   (sum_i q_i = Q exactly)

Since sum_i dq_i = 0, sum_j q~_j - Q = sum_j q0[s_j] - Q depends on the composition only: the last line places
the charge the composition lacks (zero for neutral water: q0_O + 2 q0_H = 0), weighted by softness. That step is
the closed-form charge equilibration with a diagonal hardness (minimising sum_i (q_i - q~_i)^2 / (2 w_i) under
sum_i q_i = Q), i.e. the excess goes where atoms are softest; uniform w would be the plain neutrality correction.

Why not apply that correction to per-atom raw charges directly (PhysNet's q~_i - (sum q~ - Q)/N), or solve a
full charge equilibration with the Coulomb kernel (4G-HDNNP)? Both spread the excess over the whole system, so
separated molecules exchange charge: with per-atom raw charges (measured on a water model trained that way), the
two molecules of benchmarks/water_dimer_longrange.py carried -0.022 and +0.022 e at any separation up to 30 Å,
which adds a spurious -k q^2 / R tail to their interaction and makes the energy of separated molecules differ
from the sum of their energies. Charge transfer along edges cannot cross an empty gap: a fragment's charge stays
the sum of its q0 plus its share of the composition's residual (none when sum q0 = Q, as for neutral water), so
an isolated water molecule is neutral and charges stay local (q_i depends on atoms within (n_layers + 1) r_cut).
Full charge equilibration also needs an N x N (periodic: Ewald) linear solve per step and its derivative.
The cost here is O(edges), and every step is differentiable.

The energy is that of the short-range model plus the Coulomb energy of q(R) by the existing Ewald/PME/direct
machinery (``Electrostatics``); forces and stress include dq/dR by autograd, and the whole model trains end to
end from energies and forces (and, optionally, reference charges). ``Q`` is the structure's total charge (ASE
``atoms.info["charge"]``, 0 when absent). A periodic cell with Q != 0 is refused unless the electrostatics were
built with ``neutralizing_background=True``.
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
    """(raw charges q~ [N], softness w [N]) from the per-species offsets [S] and the head's outputs [N, 2]
    (the charge transferred to each atom, the softness logit)."""
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
            "charge_model": "per-species charges plus charge transfer between neighbours driven by predicted "
            "electronegativities (a head on the short-range model's invariant node features); the charge the "
            "composition lacks for the total charge is placed by predicted softness",
            "charge_scale": CHARGE_SCALE,
            "min_softness": MIN_SOFTNESS,
            "total_charge_source": "atoms.info['charge'] (0 when absent)",
            "initial_charges": {str(z): q for z, q in self.initial_charges.items()},
            **self.coulomb.metadata(),
        }
