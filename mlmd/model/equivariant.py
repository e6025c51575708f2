"""E(3)-equivariant message passing (NequIP family) on e3nn's irreps conventions.

Node features are irreps (l = 0..l_max, natural parity 0e, 1o, 2e, ...). Each interaction forms messages
h_j (x) Y(r_ij) with weights from a radial MLP of the smoothly cut radial basis, sums them on the centre
atom, mixes them linearly, adds a species-dependent self connection and applies a gated nonlinearity.
Only scalars reach the readout, so the per-atom energy is invariant and forces (by autograd) equivariant.
With ``charge_head=True`` a ``ChargeHead`` on the same invariant node features gives, per atom, the charge
that flows to it from its neighbours and a softness logit (mlmd.model.predicted_charges turns them into charges).

The layers are defined by e3nn's modules (o3.Linear, o3.TensorProduct "uvu", o3.FullyConnectedTensorProduct):
their parameters, buffers, initialisation and weight layout are e3nn's, so checkpoints keep loading; but they
are evaluated here block by block (mlmd.model.irreps_ops), which for l_max <= 2 costs a fraction of e3nn's
generic code in the forward and, above all, in the backward pass that gives the forces.
Inside the network a feature is a list of blocks [N, 2l+1, mul] (component-major, channels last).
"""

from typing import List, Optional, Tuple

import torch
from e3nn import o3
from torch import nn

from mlmd.model.irreps_ops import (
    SILU_SCALE,
    EdgeTensorProduct,
    IrrepsLinear,
    SpeciesSelfConnection,
    SphericalHarmonics,
    uvu_instructions,
)
from mlmd.model.radial import BesselBasis


class ScaledSiLU(nn.Module):
    """SiLU with unit second moment on N(0, 1) inputs (MLP.forward_scaled folds the scale into the next matrix)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = SILU_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.scale


class MLP(nn.Module):
    """Plain MLP with normalised SiLU; used for the radial weights and the scalar readout.

    forward_scaled (the per-edge radial weights) folds each activation's scale into the following weight
    matrix, and an output scale into the last one: matrix-sized products instead of ones over every edge.
    """

    def __init__(self, sizes: List[int]) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=False))
            if k < len(sizes) - 2:
                layers.append(ScaledSiLU())
        self.net = nn.Sequential(*layers)
        self.act_scale = SILU_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_scaled(self, x: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
        """MLP(x) * out_scale (out_scale: [n_out] or [1]), the product taken on the last weight matrix."""
        scale = 1.0
        n = len(self.net)
        k = 0
        for layer in self.net:
            k += 1
            if hasattr(layer, "weight"):
                w = layer.weight * scale
                if k == n:
                    w = w * out_scale.unsqueeze(1)
                x = torch.nn.functional.linear(x, w)
                scale = 1.0
            else:
                x = torch.nn.functional.silu(x)
                scale = self.act_scale
        return x


class Gate(nn.Module):
    """Blocks [scalars, gates, gated irreps...]: scalars -> SiLU, each gated irrep times sigmoid(its gate)."""

    def __init__(self, gated: o3.Irreps) -> None:
        super().__init__()
        self.act_scale = SILU_SCALE
        self.muls: List[int] = [mul for mul, _ in gated]

    def forward(self, blocks: List[torch.Tensor]) -> List[torch.Tensor]:
        outs = [torch.nn.functional.silu(blocks[0]) * self.act_scale]
        if len(self.muls) > 0:
            gates = torch.split(torch.sigmoid(blocks[1]), self.muls, dim=2)
            for k, g in enumerate(gates):
                outs.append(blocks[2 + k] * g)
        return outs


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
        scalars_only: bool = False,
    ) -> None:
        super().__init__()
        # the last layer: only its scalars reach the readout, so its other irreps are never computed
        self.scalars_only = scalars_only
        self.linear_up = IrrepsLinear(irreps_in, irreps_in)
        irreps_mid, instructions = uvu_instructions(irreps_in, irreps_sh, {ir for _, ir in irreps_hidden})
        self.tp = EdgeTensorProduct(irreps_in, irreps_sh, irreps_mid, instructions)
        self.radial = MLP([n_basis, radial_hidden, radial_hidden, self.tp.weight_numel])
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0])
        irreps_gate_in = scalars + o3.Irreps(f"{gated.num_irreps}x0e") + gated
        self.linear_down = IrrepsLinear(irreps_mid, irreps_gate_in)
        self.tp.mix_into(self.linear_down)
        self.self_connection = SpeciesSelfConnection(irreps_in, n_species, irreps_gate_in)
        self.gate = Gate(gated)
        self.inv_sqrt_neighbors = float(avg_num_neighbors) ** -0.5
        self.residual = irreps_in == irreps_hidden

    def forward(
        self,
        h: List[torch.Tensor],
        species: torch.Tensor,
        sh: List[torch.Tensor],
        radial: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
        n_mirrored: int,
        n_out: int,
    ) -> List[torch.Tensor]:
        """radial: the basis of the edges whose lengths are computed (see EquivariantNetwork.forward).
        The new features of nodes [0, n_out) only: every centre must be among them (a rank's own atoms, when
        an engine runs the layers one by one and the other nodes are ghosts whose features it exchanged)."""
        groups = self.messages(h, sh, radial, center, neighbor, n_mirrored, n_out)
        if n_out < h[0].shape[0]:
            h = [x[:n_out] for x in h]
            species = species[:n_out]
        return self.update(groups, h, species)

    def messages(
        self,
        h: List[torch.Tensor],
        sh: List[torch.Tensor],
        radial: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
        n_mirrored: int,
        n_out: int,
    ) -> List[torch.Tensor]:
        """The summed, channel-mixed messages into nodes [0, n_out) (per irrep group [n_out, 2l+1, c]): what
        update() turns into new features. Sums over edges: an engine may add the sums of several ranks."""
        # the path weights and the 1/sqrt(neighbours) of the sum are folded into the radial MLP's last matrix
        scale = self.tp.weight_scales(radial.dtype, radial.device) * self.inv_sqrt_neighbors
        weights = self.radial.forward_scaled(radial, scale)
        # = linear_down(sum over edges of tp(...)), the channel mixing moved before the sum where it is cheaper
        up = self.linear_up(h)
        mats = self.linear_down.group_matrices()
        n_groups = 1 if self.scalars_only else -1  # group 0: the scalars (and the gates), 0e
        n_edges = center.shape[0]
        if n_mirrored > 0 and 2 * n_mirrored != n_edges:
            # some edges unpaired (a rank's edges to ghost atoms): the pairs and their reverses as one block, whose
            # per-pair weights the tensor product broadcasts over both directions, the rest as another
            sizes = [2 * n_mirrored, n_edges - 2 * n_mirrored]
            w_pairs, w_rest = torch.split(weights, [n_mirrored, n_edges - 2 * n_mirrored])
            c_pairs, c_rest = torch.split(center, sizes)
            nb_pairs, nb_rest = torch.split(neighbor, sizes)
            sh_pairs: List[torch.Tensor] = []
            sh_rest: List[torch.Tensor] = []
            for y in sh:
                parts = torch.split(y, sizes)
                sh_pairs.append(parts[0])
                sh_rest.append(parts[1])
            groups = self.tp.forward_mixed(up, sh_pairs, w_pairs, c_pairs, nb_pairs, n_out, mats, n_groups)
            rest = self.tp.forward_mixed(up, sh_rest, w_rest, c_rest, nb_rest, n_out, mats, n_groups)
            return [a + b for a, b in zip(groups, rest)]
        # (all paired: one row per pair, which the tensor product broadcasts over both directions)
        return self.tp.forward_mixed(up, sh, weights, center, neighbor, n_out, mats, n_groups)

    def update(self, groups: List[torch.Tensor], h: List[torch.Tensor], species: torch.Tensor) -> List[torch.Tensor]:
        """New features of the nodes of h (species: theirs) from their summed messages (messages())."""
        mixed = self.linear_down.split_outputs(groups, h[0])
        if self.scalars_only:
            own = self.self_connection(h, species, 1)
            out = [torch.nn.functional.silu(mixed[0] + own[0]) * self.gate.act_scale]
            if self.residual:
                out = [out[0] + h[0]]
            return out
        own = self.self_connection(h, species)
        out = self.gate([m + s for m, s in zip(mixed, own)])
        if self.residual:
            out = [o + x for o, x in zip(out, h)]
        return out

    def message_blocks(self) -> List[List[int]]:
        """(2l+1, channels) of each irrep group messages() returns, in order."""
        lin = self.linear_down
        out: List[List[int]] = []
        for g in range(1 if self.scalars_only else len(lin.group_out)):
            cols = 0
            for o in lin.group_out[g]:
                cols += lin.mul_out[o]
            out.append([lin.dim_out[lin.group_out[g][0]], cols])
        return out


def unflatten_blocks(flat: torch.Tensor, dims: List[int], muls: List[int]) -> List[torch.Tensor]:
    """Flat rows [N, sum of d * m] -> one [N, d, m] block per (d, m) (views). torch.split, not slices: the
    backward is one concatenation instead of a zero-filled full-width copy per block, summed."""
    n = flat.shape[0]
    sizes: List[int] = [d * m for d, m in zip(dims, muls)]
    out: List[torch.Tensor] = []
    for part, d, m in zip(torch.split(flat, sizes, dim=1), dims, muls):
        out.append(part.reshape(n, d, m))
    return out


def mirror_rows(x: torch.Tensor, n_mirrored: int) -> torch.Tensor:
    """Rows [a (n_mirrored), b] -> [a, a, b]: the values of edges i->j reused for their reverses j->i."""
    if n_mirrored == 0:
        return x
    parts = torch.split(x, [n_mirrored, x.shape[0] - n_mirrored])
    return torch.cat([parts[0], parts[0], parts[1]])


class EquivariantNetwork(nn.Module):
    """Graph -> per-atom energies (before the per-species shift and scale).

    Edges [0, n_mirrored) may come with their reverses at [n_mirrored, 2 n_mirrored) (a half neighbour list
    made full): whatever depends on the distance alone (radial basis and MLP) is then computed once per pair.
    The reverse edge's vector must be the negated vector; its distance is taken as the pair's, which is the
    same function of the positions, so forces (by autograd on positions or on edge vectors) are unchanged.
    """

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
        self.sh = SphericalHarmonics(l_max)
        self.sh_dims: List[int] = [2 * lv + 1 for lv in range(l_max + 1)]
        self.basis = BesselBasis(r_cut, n_basis, envelope_p)
        irreps_hidden = hidden_irreps(channels, l_max, vector_channels)
        irreps = o3.Irreps(f"{channels}x0e")
        layers = []
        # flat layout of the features entering each layer, and of the last output: (2l+1, mul) per block
        self.block_dims: List[List[int]] = [[1]]
        self.block_muls: List[List[int]] = [[channels]]
        for k in range(n_layers):
            layers.append(
                Interaction(
                    irreps, self.irreps_sh, irreps_hidden, n_species, n_basis, radial_hidden, avg_num_neighbors,
                    scalars_only=k == n_layers - 1,
                )
            )
            irreps = irreps_hidden
            self.block_dims.append([ir.dim for _, ir in irreps])
            self.block_muls.append([mul for mul, _ in irreps])
        # what leaves the last layer for the readout: its scalars
        self.block_dims[-1] = [1]
        self.block_muls[-1] = [channels]
        self.layers = nn.ModuleList(layers)
        # flat layout of each layer's summed messages (Interaction.messages): (2l+1, channels) per irrep group
        self.message_dims: List[List[int]] = [[d for d, _ in lay.message_blocks()] for lay in layers]
        self.message_muls: List[List[int]] = [[c for _, c in lay.message_blocks()] for lay in layers]
        self.readout = MLP([channels, channels, 1])
        self.charge_readout: Optional[ChargeHead] = None
        if charge_head:
            self.charge_readout = ChargeHead(channels, n_basis)
        # aleatoric uncertainty: a per-atom log-variance read from the same invariant features
        self.variance_readout: Optional[MLP] = None
        if variance_head:
            self.variance_readout = MLP([channels, channels, 1])

    def _edge_attributes(
        self, edge_vectors: torch.Tensor, n_mirrored: int
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Spherical harmonics of every edge (one block per l) and the radial basis (with n_mirrored: of the
        edges before and after the reverses only, one row per pair, as the layers take it)."""
        r = torch.linalg.norm(edge_vectors, dim=1)
        sh = self.sh(edge_vectors, r)
        if n_mirrored > 0:
            parts = torch.split(r, [n_mirrored, n_mirrored, r.shape[0] - 2 * n_mirrored])
            r = torch.cat([parts[0], parts[2]])
        return sh, self.basis(r)

    def _features(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Invariant (l = 0) node features after the last interaction [N, channels], and the radial basis [E, B]
        (with n_mirrored: of the edges before and after the reverses only, as mirror_rows takes it)."""
        # embedding of a one-hot vector = a column of the weight (exactly: the other products are zeros)
        h = [self.embedding.weight.t().index_select(0, species).unsqueeze(1)]
        sh, radial = self._edge_attributes(edge_vectors, n_mirrored)
        center = edge_index[0]
        neighbor = edge_index[1]
        for layer in self.layers:
            h = layer(h, species, sh, radial, center, neighbor, n_mirrored, h[0].shape[0])
        return h[0].squeeze(1), radial

    # ---- layer by layer (an engine that exchanges the ghost atoms' features between layers, e.g. LAMMPS over
    # MPI): features travel as one flat row per atom, [N, sum of (2l+1) * mul] (block after block, each
    # flattened component-major), so that an engine can copy them without knowing the irreps.

    @torch.jit.export
    def feature_widths(self) -> List[int]:
        """Width of the flat features entering layer 0, 1, ..., n_layers - 1, then of the last layer's output (its
        scalars: what the readout reads)."""
        out: List[int] = []
        for k in range(len(self.block_dims)):
            w = 0
            for d, m in zip(self.block_dims[k], self.block_muls[k]):
                w += d * m
            out.append(w)
        return out

    @torch.jit.export
    def embed_flat(self, species: torch.Tensor) -> torch.Tensor:
        """Features entering layer 0 [N, channels]: they depend on the species alone (no exchange needed)."""
        return self.embedding.weight.t().index_select(0, species)

    def _blocks(self, flat: torch.Tensor, k: int) -> List[torch.Tensor]:
        return unflatten_blocks(flat, self.block_dims[k], self.block_muls[k])

    @torch.jit.export
    def edge_features_flat(self, edge_vectors: torch.Tensor, n_mirrored: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """What every layer reads of the edges, computed once: the spherical harmonics, block after block (the
        E values of l = 0, then E x 3 of l = 1, ...: [E (l_max+1)^2]) and the radial basis [E', n_basis] (E' =
        E - n_mirrored with mirrored pairs: one row per pair, see forward). Block-major, so that each block the
        layers read is contiguous: a column of an [E, (l_max+1)^2] table is read at twice the cost per edge."""
        sh, radial = self._edge_attributes(edge_vectors, n_mirrored)
        return torch.cat([y.reshape(-1) for y in sh]), radial

    def _sh_blocks(self, sh: torch.Tensor) -> List[torch.Tensor]:
        """edge_features_flat's spherical harmonics as the layers take them: one [E, 2l+1] block per l (views)."""
        n_edges = sh.shape[0] // sum(self.sh_dims)
        sizes: List[int] = [n_edges * d for d in self.sh_dims]
        out: List[torch.Tensor] = []
        for part, d in zip(torch.split(sh, sizes), self.sh_dims):
            out.append(part.view(n_edges, d))
        return out

    @torch.jit.export
    def interaction_flat(
        self, layer: int, h: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor,
        radial: torch.Tensor, n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        """Layer `layer` on flat features h [N, width] of every node, with edge_features_flat's sh and radial:
        the new flat features of nodes [0, n_out) (every edge's centre must be below n_out)."""
        sh_blocks = self._sh_blocks(sh)
        blocks = self._blocks(h, layer)
        out: List[torch.Tensor] = []
        for k, lay in enumerate(self.layers):  # TorchScript indexes a ModuleList with constants only
            if k == layer:
                out = lay(blocks, species, sh_blocks, radial, edge_index[0], edge_index[1], n_mirrored, n_out)
        if len(out) == 0:
            raise ValueError("no interaction layer " + str(layer))
        return torch.cat([b.reshape(n_out, -1) for b in out], dim=1)

    @torch.jit.export
    def message_widths(self) -> List[int]:
        """Width of each layer's flat summed messages (messages_flat)."""
        out: List[int] = []
        for dims, muls in zip(self.message_dims, self.message_muls):
            w = 0
            for d, m in zip(dims, muls):
                w += d * m
            out.append(w)
        return out

    @torch.jit.export
    def messages_flat(
        self, layer: int, h: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor,
        n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        """The first half of interaction_flat: the flat summed messages [n_out, message width] into nodes
        [0, n_out) from the edges given (centres below n_out). Sums: messages into one atom computed on several
        ranks add up (an engine that computes each pair on one rank sends the ghosts' sums to their owners)."""
        sh_blocks = self._sh_blocks(sh)
        blocks = self._blocks(h, layer)
        out: List[torch.Tensor] = []
        for k, lay in enumerate(self.layers):
            if k == layer:
                out = lay.messages(blocks, sh_blocks, radial, edge_index[0], edge_index[1], n_mirrored, n_out)
        if len(out) == 0:
            raise ValueError("no interaction layer " + str(layer))
        return torch.cat([g.reshape(n_out, -1) for g in out], dim=1)

    @torch.jit.export
    def update_flat(self, layer: int, h: torch.Tensor, messages: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """The second half of interaction_flat: new flat features of the nodes of h from their summed flat
        messages (all three row-aligned: a rank's own atoms)."""
        n = h.shape[0]
        groups = unflatten_blocks(messages, self.message_dims[layer], self.message_muls[layer])
        blocks = self._blocks(h, layer)
        out: List[torch.Tensor] = []
        for k, lay in enumerate(self.layers):
            if k == layer:
                out = lay.update(groups, blocks, species)
        if len(out) == 0:
            raise ValueError("no interaction layer " + str(layer))
        return torch.cat([b.reshape(n, -1) for b in out], dim=1)

    @torch.jit.export
    def readout_flat(self, h: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (before shift and scale) from the last layer's flat output."""
        return self.readout(h[:, : self.channels]).squeeze(-1)

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> torch.Tensor:
        return self.readout(self._features(species, edge_index, edge_vectors, n_mirrored)[0]).squeeze(-1)

    @torch.jit.export
    def energies_and_log_variances(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] and the variance head's per-atom log-variances [N] (in units of the energy
        scale squared) from one pass; [0] without a head."""
        h, _ = self._features(species, edge_index, edge_vectors, n_mirrored)
        eps = self.readout(h).squeeze(-1)
        if self.variance_readout is not None:
            return eps, self.variance_readout(h).squeeze(-1)
        return eps, h.new_zeros(0)

    @torch.jit.export
    def energies_and_charge_outputs(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_mirrored: int = 0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] and the charge head's outputs [N, 2] from one pass ([N, 0] without a head)."""
        h, radial = self._features(species, edge_index, edge_vectors, n_mirrored)
        eps = self.readout(h).squeeze(-1)
        if self.charge_readout is not None:
            return eps, self.charge_readout(h, mirror_rows(radial, n_mirrored), edge_index)
        return eps, h.new_zeros(h.shape[0], 0)
