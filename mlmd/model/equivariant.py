"""E(3)-equivariant message passing (NequIP family) on e3nn building blocks.

Node features are irreps (l = 0..l_max, natural parity 0e, 1o, 2e, ...). Each interaction forms messages
h_j (x) Y(r_ij) with weights from a radial MLP of the smoothly cut radial basis, sums them on the centre
atom, mixes them linearly, adds a species-dependent self connection and applies a gated nonlinearity.
Only scalars reach the readout, so the per-atom energy is invariant and forces (by autograd) equivariant.
With ``charge_head=True`` a ``ChargeHead`` on the same invariant node features gives, per atom, the charge
that flows to it from its neighbours and a softness logit (mlmd.model.predicted_charges turns them into charges).
"""

from typing import Optional, Tuple

import torch
from e3nn import o3
from torch import nn

from mlmd.model.radial import BesselBasis


def _silu_second_moment_scale() -> float:
    # 1 / sqrt(E[silu(x)^2]) for x ~ N(0, 1), so activations keep unit second moment (e3nn's normalize2mom idea)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    return float(torch.nn.functional.silu(x).pow(2).mean().rsqrt())


SILU_SCALE = _silu_second_moment_scale()


class ScaledSiLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = SILU_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.scale


class MLP(nn.Module):
    """Plain MLP with normalised SiLU; used for the radial weights and the scalar readout."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=False))
            if k < len(sizes) - 2:
                layers.append(ScaledSiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Gate(nn.Module):
    """Input layout [scalars | gates | gated irreps]; scalars -> SiLU, each gated irrep times sigmoid(gate)."""

    def __init__(self, n_scalars: int, gated: o3.Irreps) -> None:
        super().__init__()
        self.n_scalars = n_scalars
        self.act_scale = SILU_SCALE
        self.n_gates = gated.num_irreps
        self.muls: list[int] = [mul for mul, _ in gated]
        self.dims: list[int] = [ir.dim for _, ir in gated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ns = self.n_scalars
        outs = [torch.nn.functional.silu(x[:, :ns]) * self.act_scale]
        gates = torch.sigmoid(x[:, ns : ns + self.n_gates])
        rest = x[:, ns + self.n_gates :]
        off = 0
        goff = 0
        for mul, dim in zip(self.muls, self.dims):
            block = rest[:, off : off + mul * dim].reshape(-1, mul, dim)
            block = block * gates[:, goff : goff + mul].unsqueeze(-1)
            outs.append(block.reshape(-1, mul * dim))
            off += mul * dim
            goff += mul
        return torch.cat(outs, dim=1)


class ChargeHead(nn.Module):
    """Charge transfer between neighbours, driven by a predicted electronegativity-like scalar chi.

    From the invariant node features h: chi_i and a softness logit b_i (an MLP); from the radial basis of each
    edge (which carries the cutoff envelope): a coupling kappa(r_ij). The charge flowing to atom i is
    dq_i = sum_j kappa(r_ij) (chi_j - chi_i): antisymmetric in (i, j) over a full (symmetric) neighbour list, so
    sum_i dq_i = 0 exactly within every group of atoms connected by edges, and dq_i -> 0 smoothly as a
    neighbour leaves the cutoff. forward -> [N, 2]: (dq_i, b_i).
    """

    def __init__(self, channels: int, n_basis: int) -> None:
        super().__init__()
        self.node = MLP([channels, channels, 2])
        self.coupling = nn.Linear(n_basis, 1, bias=False)
        with torch.no_grad():  # start near the per-species charges: small outputs, so small early updates
            self.node.net[-1].weight.mul_(0.1)

    def forward(self, h: torch.Tensor, radial: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        out = self.node(h)
        chi = out[:, 0]
        kappa = self.coupling(radial).squeeze(-1)
        flux = kappa * (chi[edge_index[1]] - chi[edge_index[0]])
        dq = torch.zeros_like(chi).index_add(0, edge_index[0], flux)
        return torch.stack([dq, out[:, 1]], dim=1)


def hidden_irreps(channels: int, l_max: int, vector_channels: int) -> o3.Irreps:
    parts = [(channels, (0, 1))] + [(vector_channels, (lv, (-1) ** lv)) for lv in range(1, l_max + 1)]
    return o3.Irreps(parts)


class Interaction(nn.Module):
    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_hidden: o3.Irreps,
        n_species: int,
        n_basis: int,
        radial_hidden: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        self.linear_up = o3.Linear(irreps_in, irreps_in)
        wanted = {ir for _, ir in irreps_hidden}
        mid = []
        instructions = []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(mid)
        self.tp = o3.TensorProduct(
            irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False, internal_weights=False
        )
        self.radial = MLP([n_basis, radial_hidden, radial_hidden, self.tp.weight_numel])
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0])
        irreps_gate_in = scalars + o3.Irreps(f"{gated.num_irreps}x0e") + gated
        self.linear_down = o3.Linear(irreps_mid, irreps_gate_in)
        species_irreps = o3.Irreps(f"{n_species}x0e")
        self.self_connection = o3.FullyConnectedTensorProduct(irreps_in, species_irreps, irreps_gate_in)
        self.gate = Gate(scalars.num_irreps, gated)
        self.inv_sqrt_neighbors = float(avg_num_neighbors) ** -0.5
        self.residual = irreps_in == irreps_hidden

    def forward(
        self,
        h: torch.Tensor,
        node_attr: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
    ) -> torch.Tensor:
        weights = self.radial(radial)
        messages = self.tp(self.linear_up(h)[neighbor], sh, weights)
        agg = torch.zeros(h.shape[0], messages.shape[1], dtype=h.dtype, device=h.device)
        agg = agg.index_add(0, center, messages) * self.inv_sqrt_neighbors
        out = self.gate(self.linear_down(agg) + self.self_connection(h, node_attr))
        if self.residual:
            out = out + h
        return out


class EquivariantNetwork(nn.Module):
    """Graph -> per-atom energies (before the per-species shift and scale)."""

    def __init__(
        self,
        n_species: int,
        r_cut: float,
        channels: int = 32,
        vector_channels: int = 16,
        l_max: int = 1,
        n_layers: int = 2,
        n_basis: int = 8,
        radial_hidden: int = 32,
        envelope_p: int = 6,
        avg_num_neighbors: float = 20.0,
        charge_head: bool = False,
        variance_head: bool = False,
    ) -> None:
        super().__init__()
        self.n_species = n_species
        self.channels = channels
        self.embedding = nn.Linear(n_species, channels, bias=False)
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.basis = BesselBasis(r_cut, n_basis, envelope_p)
        irreps_hidden = hidden_irreps(channels, l_max, vector_channels)
        irreps = o3.Irreps(f"{channels}x0e")
        layers = []
        for _ in range(n_layers):
            layers.append(
                Interaction(
                    irreps, self.irreps_sh, irreps_hidden, n_species, n_basis, radial_hidden, avg_num_neighbors
                )
            )
            irreps = irreps_hidden
        self.layers = nn.ModuleList(layers)
        self.readout = MLP([channels, channels, 1])
        self.charge_readout: Optional[ChargeHead] = None
        if charge_head:
            self.charge_readout = ChargeHead(channels, n_basis)
        # aleatoric uncertainty: a per-atom log-variance read from the same invariant features
        self.variance_readout: Optional[MLP] = None
        if variance_head:
            self.variance_readout = MLP([channels, channels, 1])

    def _features(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Invariant (l = 0) node features after the last interaction [N, channels], and the radial basis [E, B]."""
        node_attr = torch.nn.functional.one_hot(species, self.n_species).to(edge_vectors.dtype)
        h = self.embedding(node_attr)
        r = torch.linalg.norm(edge_vectors, dim=1)
        sh = self.sh(edge_vectors)
        radial = self.basis(r)
        center = edge_index[0]
        neighbor = edge_index[1]
        for layer in self.layers:
            h = layer(h, node_attr, sh, radial, center, neighbor)
        return h[:, : self.channels], radial

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.readout(self._features(species, edge_index, edge_vectors)[0]).squeeze(-1)

    @torch.jit.export
    def energies_and_log_variances(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] and the variance head's per-atom log-variances [N] (in units of the energy
        scale squared) from one pass; [0] without a head."""
        h, _ = self._features(species, edge_index, edge_vectors)
        eps = self.readout(h).squeeze(-1)
        if self.variance_readout is not None:
            return eps, self.variance_readout(h).squeeze(-1)
        return eps, h.new_zeros(0)

    @torch.jit.export
    def energies_and_charge_outputs(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] and the charge head's outputs [N, 2] from one pass ([N, 0] without a head)."""
        h, radial = self._features(species, edge_index, edge_vectors)
        eps = self.readout(h).squeeze(-1)
        if self.charge_readout is not None:
            return eps, self.charge_readout(h, radial, edge_index)
        return eps, h.new_zeros(h.shape[0], 0)
