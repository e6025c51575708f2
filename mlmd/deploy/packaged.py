"""The packaged-model contract: a TorchScript module any engine can call without importing mlmd.

Entry points (lengths in Å, energies in eV, charges in e, species as atomic numbers):
- forward(positions [N,3], cell [3,3], numbers [N], pbc [3] bool, total_charge=0.0) -> total energy []
  builds its own O(N) neighbour list (vesin, periodic images included);
- atomic_energies(positions, cell, numbers, pbc, total_charge=0.0) -> [N];
- compute(positions, cell, numbers, pbc, compute_stress, total_charge=0.0)
  -> {energy, atomic_energies, forces, stress, charges} with forces = -dE/dR and stress = (1/V) dE/d(strain),
  by autograd (with predicted charges they include dq/dR); "charges" for a model with electrostatics;
- charges(positions, cell, numbers, pbc, total_charge=0.0) -> [N]: the predicted charges (summing to
  total_charge), or the fixed per-element ones; an error for a model without electrostatics;
- local_energies(species, edge_index, edge_vectors, n_local, n_mirrored=0) -> [n_local]: the LAMMPS entry on a
  graph the engine built (local + ghost atoms, full list); the engine gets forces and virial from the edge
  vectors. n_mirrored > 0: the first n_mirrored edges are followed by their reverses (same order, negated
  vectors), and the pair's distance-only terms are computed once;
- local_dispersion(species, edge_index, edge_vectors, n_local, n_mirrored=0) -> (energies [n_local],
  weights [n_local, R], weight_sums [S, R]): the model's D3 two-body energies on the same kind of graph, out to the
  D3 cutoffs (mlmd.model.dispersion_graph: the nodes within the two-body cutoff of a local atom must be centres
  too, so ghost atoms reach cutoff + cutoff_cn); zeros for a model without D3 (a card lists the entry,
  long_range.dispersion says whether there is D3). With the tail correction in a 3D-periodic cell, the engine adds
  the weight_sums of every rank and calls local_dispersion_tail(species [n_local], weights, summed weight_sums,
  volume Å^3) -> [n_local] (the -E_tail per diagonal virial component is the engine's);
- local_dispersion_cn(species, edge_index, edge_vectors, n_local, n_mirrored=0) -> cn [n_local] and
  local_dispersion_given_cn(species, edge_index, edge_vectors, n_local, cn [n_nodes], n_mirrored=0) -> as
  local_dispersion: the same D3 split at the coordination numbers, for an engine that sends the local atoms' CN to
  their ghost copies and the gradients of the ghosts' CN back to the owners (mlmd.model.dispersion_graph); the
  graph then needs ghosts out to max(cutoff, cutoff_cn) only;
- local_dispersion_whole_pairs(species, edge_index, edge_vectors, n_local, cn [n_nodes], n_mirrored, ghost_pairs)
  -> (energies [n_nodes], weights, weight_sums): local_dispersion_given_cn with each pair across ranks computed on
  one rank: ghost_pairs (int64) lists the unpaired edges (after the n_mirrored pairs and their reverses: those to
  ghosts) whose pairs this rank computes (the other rank of each such pair leaves it out); those and the local
  pairs count whole, the other unpaired edges not at all, and every node's energy is returned (a ghost node's half
  belongs to its owner);
- local_dispersion_cn_slopes(species, edge_index, edge_vectors, n_local, n_mirrored) -> (cn [n_local], slopes
  [n_edges], weight_sums [S, R]) and local_dispersion_by_hand(species, edge_index, edge_vectors, n_local,
  n_mirrored, cn [n_nodes], ghost_pairs, weight_sums summed over ranks, volume Å^3 or 0) -> (energies [n_nodes],
  pair slopes [n_edges], dE/dCN [n_nodes], tail [n_local] or empty): the whole-pairs split with the derivatives as
  values instead of an autograd graph (mlmd.model.dispersion_graph.graph_whole_pairs_by_hand): the engine sends
  the ghosts' dE/dCN to their owners and takes dE/dv_e = 2 (pair_slope_e + slope_e (dE/dCN_src + dE/dCN_dst for
  the first n_mirrored edges)) v_e; the local energies include the tail share;
- local_dispersion_atm(species, edge_index, edge_vectors, n_local, cn [n_nodes], atom_ids [n_nodes]) -> [n_nodes]:
  the D3 three-body (ATM) energies of the triples whose lowest-ID atom is a local node, in thirds over their
  nodes (ghost nodes' thirds belong to their owners), given every node's CN (mlmd.model.dispersion_graph_atm; the
  graph holds the local nodes' edges out to the three-body cutoff); zeros without the three-body term;
- local_charges(species, edge_index, edge_vectors, n_local, n_mirrored=0) -> (energies [n_local], raw charges
  [n_local], softnesses [n_local]): a predicted-charge model's short-range energies and its charge head's outputs
  on the same kind of graph (it must hold every atom within (n_layers + 1) * r_cut of a local atom: the charge
  transfer reads the neighbours' electronegativities). The engine conserves the total charge over every rank
  (q_i = raw_i - w_i (sum raw - Q) / sum w, as PredictedCoulombTerm.conserve) and sums the Coulomb energy; an
  error for a model that does not predict charges;
- species_of(numbers) -> species indices (errors on an element the model does not know);
- local_member_energies(species, edge_index, edge_vectors, n_local) -> [n_members, n_local]: the same per
  committee member (one row for a single model);
- local_energies_of_member(member, species, edge_index, edge_vectors, n_local) -> [n_local] (ensembles only):
  one member's row of local_member_energies; an engine that needs member forces calls it once per member, so
  that each backward pass runs through one member (older committee files lack it: use local_member_energies);
- uncertainty(positions, cell, numbers, pbc, compute_stress) (ensembles only, PackagedEnsemble): compute()'s
  committee means plus energy_std [], forces_std [N] (per-atom RMS deviation of the member force vectors),
  atomic_energies_std [N], member_energies [K], member_forces [K, N, 3].
Attributes: r_cut, interaction_range (n_layers * r_cut: how far ghost atoms must reach), atomic_numbers,
n_members (1 for a single model; files packaged before 0.2 lack it and are single models).
"""



from typing import List, Optional, Tuple

import torch
from torch import nn
from vesin_torch import NeighborList

from mlmd.deploy.card import DEFAULT_MIN_DISTANCE
from mlmd.model.assembly import EnergyAssembly
from mlmd.model.ensemble import committee_spread


def _fmt(x: float) -> str:
    """x with three decimals (TorchScript's str(float) prints 17 digits)."""
    milli = int(round(abs(x) * 1000.0))
    frac = str(milli % 1000)
    while len(frac) < 3:
        frac = "0" + frac
    return ("-" if x < 0 else "") + str(milli // 1000) + "." + frac


def _index_list(idx: torch.Tensor) -> str:
    """'3, 7, 12 (and 5 more)' for a 1-D tensor of atom indices."""
    n = int(idx.numel())
    parts: List[str] = []
    for k in range(min(n, 8)):
        parts.append(str(int(idx[k])))
    text = ", ".join(parts)
    if n > 8:
        text = text + " (and " + str(n - 8) + " more)"
    return text


def _check_finite(values: torch.Tensor, what: str) -> None:
    """A NaN or infinity stops the caller here, naming the atoms (rows of values), instead of propagating."""
    ok = torch.isfinite(values.detach())
    if values.dim() > 1:
        ok = ok.all(dim=1)
    if not bool(ok.all()):
        raise ValueError(
            "the model gave a non-finite " + what + " for atom(s) " + _index_list(torch.nonzero(~ok).flatten())
            + ": the configuration is broken or far outside what the model can describe"
        )


class PackagedModel(EnergyAssembly):
    """The energy assembly (mlmd.model.assembly: the same code and numbers as training) with its own neighbour
    list, the input checks and the entry points. A subclass rather than a member, so that the weights keep the
    names older files have (potential.*, long_range.*, charge_term.*): repackage compares them key by key.

    The whole-system entries include the long-range terms; local_energies (LAMMPS) does not: engines that
    build their own graph add them natively (coul/long + kspace, dispersion/d3) from the model card.
    """

    atomic_numbers: List[int]

    def __init__(
        self, potential: nn.Module, atomic_numbers: list[int], r_cut: float, n_layers: int,
        long_range: Optional[list[nn.Module]] = None,
    ) -> None:
        super().__init__(potential, long_range)
        self.atomic_numbers = list(atomic_numbers)
        self.r_cut: float = float(r_cut)
        self.n_layers: int = int(n_layers)
        self.interaction_range: float = float(r_cut) * n_layers
        self.min_distance: float = DEFAULT_MIN_DISTANCE
        table = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(atomic_numbers):
            table[z] = k
        self.register_buffer("z_to_species", table)
        # each pair once; _graph adds the reverse edges after them, and the potential computes what depends on
        # the distance alone once per pair (n_mirrored)
        self.nl = NeighborList(cutoff=float(r_cut), full_list=False)

    @torch.jit.export
    def species_of(self, numbers: torch.Tensor) -> torch.Tensor:
        if numbers.numel() > 0 and (bool((numbers < 0).any()) or bool((numbers > 118).any())):
            raise ValueError("atomic numbers must be between 1 and 118")
        species = self.z_to_species[numbers]
        if bool((species < 0).any()):
            bad = numbers[species < 0]
            raise ValueError(
                "element with atomic number " + str(int(bad[0])) + " is not known to this model (it knows Z="
                + str(self.atomic_numbers) + ")"
            )
        return species

    def _graph(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> list[torch.Tensor]:
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or infinity")
        periodic = bool(pbc.any())
        if periodic:
            if not bool(torch.isfinite(cell).all()) or float(torch.abs(torch.linalg.det(cell))) < 1e-6:
                raise ValueError("periodic system given no cell (zero volume): set the box or pbc=False")
            box = cell
        else:
            box = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device)
        i, j, s = self.nl.compute(positions.detach(), box.detach(), pbc, "ijS", True)
        i = i.to(torch.long)
        j = j.to(torch.long)
        # full list: the pairs i->j, then their reverses j->i in the same order
        edge_index = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
        shifts = s.to(positions.dtype)
        shifts = torch.cat([shifts, -shifts])
        return [edge_index, shifts, box]

    def _check_distances(self, vectors: torch.Tensor, edge_index: torch.Tensor) -> None:
        """Refuse atoms closer than min_distance, on the edge vectors the energy is computed from."""
        if edge_index.shape[1] == 0:
            return
        r = torch.linalg.norm(vectors.detach(), dim=1)
        k = int(torch.argmin(r))
        if float(r[k]) < self.min_distance:
            raise ValueError(
                "atoms " + str(int(edge_index[0, k])) + " and " + str(int(edge_index[1, k])) + " are "
                + _fmt(float(r[k])) + " Å apart (closer than " + _fmt(self.min_distance) + " Å)"
            )

    def _total(self, total_charge: float, positions: torch.Tensor) -> torch.Tensor:
        return torch.full((1,), total_charge, dtype=positions.dtype, device=positions.device)

    def _checked_edges(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor
    ) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
        """(species, the graph [edge_index, shifts, box], its checked edge vectors): entries without stress."""
        species = self.species_of(numbers)
        g = self._graph(positions, cell, pbc)
        vec = positions[g[0][1]] - positions[g[0][0]] + g[1] @ g[2]
        self._check_distances(vec, g[0])
        return species, g, vec

    def _checked_strained_edges(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor, stress: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """(species, the graph, the assembly's _strained_edges with its edge vectors checked): forces (stress)."""
        species = self.species_of(numbers)
        g = self._graph(positions, cell, pbc)
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        strained = self._strained_edges(positions, g[2].unsqueeze(0), g[0], g[1], batch, 1, True, stress)
        self._check_distances(strained[4], g[0])
        return species, g, strained

    @torch.jit.export
    def compute(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor,
        compute_stress: bool, total_charge: float = 0.0
    ) -> dict[str, torch.Tensor]:
        stress = compute_stress and bool(pbc.all())
        species, g, strained = self._checked_strained_edges(positions, cell, numbers, pbc, stress)
        out = self._properties_of(strained, g[2].unsqueeze(0), species, g[0], numbers, pbc,
                                 self._total(total_charge, positions), None, 1, g[0].shape[1] // 2, True, stress, False)
        _check_finite(out["atomic_energies"], "energy")
        _check_finite(out["forces"], "force")
        result: dict[str, torch.Tensor] = {}
        for key, value in out.items():
            result[key] = value.detach()
        result["energy"] = result["energy"][0]
        if "stress" in result:
            result["stress"] = result["stress"][0]
        return result

    def _whole_system(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor,
        total_charge: float,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        species, g, vec = self._checked_edges(positions, cell, numbers, pbc)
        atomic, charges = self._energies(species, g[0], vec, positions, g[2], numbers, pbc,
                                        self._total(total_charge, positions), None, g[0].shape[1] // 2)
        _check_finite(atomic, "energy")
        return atomic, charges

    @torch.jit.export
    def atomic_energies(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor,
        total_charge: float = 0.0
    ) -> torch.Tensor:
        return self._whole_system(positions, cell, numbers, pbc, total_charge)[0]

    @torch.jit.export
    def charges(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor,
        total_charge: float = 0.0
    ) -> torch.Tensor:
        if self.charge_term is not None:
            species, g, vec = self._checked_edges(positions, cell, numbers, pbc)
            total = self._total(total_charge, positions)
            return self._predicted_charges(species, g[0], vec, total, None, g[0].shape[1] // 2)[1].detach()
        if self.has_fixed_charges:
            self.species_of(numbers)
            return self.fixed_charge_table[numbers].to(positions.dtype)
        raise ValueError("this model has no electrostatics, so no charges")

    def forward(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor,
        total_charge: float = 0.0
    ) -> torch.Tensor:
        return self.atomic_energies(positions, cell, numbers, pbc, total_charge).sum()

    @torch.jit.export
    def local_energies(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> torch.Tensor:
        return self.potential(species, edge_index, edge_vectors, n_mirrored)[:n_local]

    @torch.jit.export
    def local_member_energies(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
    ) -> torch.Tensor:
        return self.potential(species, edge_index, edge_vectors)[:n_local].unsqueeze(0)

    @torch.jit.export
    def local_charges(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the branch is compiled only for a model with a charge term (as in charges())
        if self.charge_term is not None:
            atomic, raw, softness = self.potential.energies_and_charges(species, edge_index, edge_vectors,
                                                                        n_mirrored)
            return atomic[:n_local], raw[:n_local], softness[:n_local]
        raise ValueError("this model does not predict charges")

    def _numbers_of(self, species: torch.Tensor) -> torch.Tensor:
        """Atomic numbers of species indices (what the D3 terms take)."""
        return torch.tensor(self.atomic_numbers, dtype=torch.long, device=species.device)[species]

    @torch.jit.export
    def local_dispersion(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        energies = torch.zeros(n_local, dtype=edge_vectors.dtype, device=edge_vectors.device)
        weights = torch.zeros(n_local, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        sums = torch.zeros(0, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            energies, weights, sums = term.graph_energies(numbers, edge_index, edge_vectors, n_local, n_mirrored)
        return energies, weights, sums

    @torch.jit.export
    def local_dispersion_cn(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> torch.Tensor:
        cn = torch.zeros(n_local, dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            cn = term.graph_cn(numbers, edge_index, edge_vectors, n_local, n_mirrored)
        return cn

    @torch.jit.export
    def local_dispersion_given_cn(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        cn: torch.Tensor, n_mirrored: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        energies = torch.zeros(n_local, dtype=edge_vectors.dtype, device=edge_vectors.device)
        weights = torch.zeros(n_local, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        sums = torch.zeros(0, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            energies, weights, sums = term.graph_energies_given_cn(numbers, edge_index, edge_vectors, n_local, cn,
                                                                   n_mirrored)
        return energies, weights, sums

    @torch.jit.export
    def local_dispersion_whole_pairs(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        cn: torch.Tensor, n_mirrored: int, ghost_pairs: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        energies = torch.zeros(species.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        weights = torch.zeros(n_local, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        sums = torch.zeros(0, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            if hasattr(term, "graph_energies_whole_pairs_given_cn"):
                energies, weights, sums = term.graph_energies_whole_pairs_given_cn(numbers, edge_index, edge_vectors,
                                                                                   n_local, cn, n_mirrored,
                                                                                   ghost_pairs)
            else:  # a D3 term compiled before the entry (kept when it could not be rebuilt)
                raise ValueError("this file's D3 term predates the whole-pairs entry: repackage it")
        return energies, weights, sums

    @torch.jit.export
    def local_dispersion_cn_slopes(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        n_mirrored: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cn = torch.zeros(n_local, dtype=edge_vectors.dtype, device=edge_vectors.device)
        slopes = torch.zeros(edge_index.shape[1], dtype=edge_vectors.dtype, device=edge_vectors.device)
        sums = torch.zeros(0, 0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            if hasattr(term, "graph_cn_by_hand"):
                cn, slopes, sums = term.graph_cn_by_hand(numbers, edge_index, edge_vectors, n_local, n_mirrored)
            else:  # a D3 term compiled before the entry (kept when it could not be rebuilt)
                raise ValueError("this file's D3 term predates the derivatives by hand: repackage it")
        return cn, slopes, sums

    @torch.jit.export
    def local_dispersion_by_hand(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        n_mirrored: int, cn: torch.Tensor, ghost_pairs: torch.Tensor, weight_sums: torch.Tensor, volume: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        energies = torch.zeros(species.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        slopes = torch.zeros(edge_index.shape[1], dtype=edge_vectors.dtype, device=edge_vectors.device)
        de_dcn = torch.zeros(species.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        tail = torch.zeros(0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            if hasattr(term, "graph_whole_pairs_by_hand"):
                energies, slopes, de_dcn, tail = term.graph_whole_pairs_by_hand(
                    numbers, edge_index, edge_vectors, n_local, n_mirrored, cn, ghost_pairs, weight_sums, volume)
            else:  # a D3 term compiled before the entry (kept when it could not be rebuilt)
                raise ValueError("this file's D3 term predates the derivatives by hand: repackage it")
        return energies, slopes, de_dcn, tail

    @torch.jit.export
    def local_dispersion_atm(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
        cn: torch.Tensor, atom_ids: torch.Tensor,
    ) -> torch.Tensor:
        energies = torch.zeros(species.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            if hasattr(term, "graph_three_body_energies"):
                energies = term.graph_three_body_energies(numbers, edge_index, edge_vectors, n_local, cn, atom_ids)
            else:  # a D3 term compiled before the entry (kept when it could not be rebuilt): no graph ATM
                raise ValueError("this file's D3 term predates the three-body entry: repackage it")
        return energies

    @torch.jit.export
    def local_dispersion_tail(
        self, species: torch.Tensor, weights: torch.Tensor, weight_sums: torch.Tensor, volume: float
    ) -> torch.Tensor:
        energies = torch.zeros(species.shape[0], dtype=weights.dtype, device=weights.device)
        numbers = self._numbers_of(species)
        for term in self.dispersion:
            energies = term.graph_tail(numbers, weights, weight_sums, volume)
        return energies


class PackagedLayered(PackagedModel):
    """A message-passing model an engine can also run one interaction layer at a time, exchanging the ghost
    atoms' features between layers (LAMMPS over MPI: each rank then computes only its own atoms' messages,
    with ghosts out to r_cut instead of n_layers * r_cut). Features are flat rows [N, width] per atom.

    layer_widths(member) -> widths of the features entering layers 0..n_layers-1, then of the last output;
    layer_embed(member, species) -> features entering layer 0 (species only: no exchange needed);
    layer_edges(member, edge_vectors, n_mirrored) -> (sh, radial): what every layer reads of the edges, once;
    layer_interaction(member, layer, h, species, edge_index, sh, radial, n_mirrored, n_local) -> the new
      features of nodes [0, n_local) from h of every node (every edge's centre below n_local);
    layer_readout(member, h, species) -> per-atom energies (eV) of the nodes of h (species: theirs).
    layer_interaction in two halves, for an engine that computes each pair on one rank (messages both ways) and
    sends the messages summed into ghost atoms to their owners:
    layer_message_widths(member) -> width of each layer's flat summed messages;
    layer_messages(member, layer, h, edge_index, sh, radial, n_mirrored, n_out) -> summed messages [n_out, width]
      into nodes [0, n_out) (ghosts included) from the edges given;
    layer_update(member, layer, h, messages, species) -> new features of the nodes of h from their summed
      messages (the sums over every rank).
    member: 0 for a single model; a committee's energy is the mean over its members.
    """

    @torch.jit.export
    def layer_widths(self, member: int) -> List[int]:
        return self.potential.layer_widths(member)

    @torch.jit.export
    def layer_embed(self, member: int, species: torch.Tensor) -> torch.Tensor:
        return self.potential.layer_embed(member, species)

    @torch.jit.export
    def layer_edges(
        self, member: int, edge_vectors: torch.Tensor, n_mirrored: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.potential.layer_edges(member, edge_vectors, n_mirrored)

    @torch.jit.export
    def layer_interaction(
        self, member: int, layer: int, h: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
        sh: torch.Tensor, radial: torch.Tensor, n_mirrored: int, n_local: int,
    ) -> torch.Tensor:
        return self.potential.layer_interaction(member, layer, h, species, edge_index, sh, radial, n_mirrored,
                                                n_local)

    @torch.jit.export
    def layer_message_widths(self, member: int) -> List[int]:
        return self.potential.layer_message_widths(member)

    @torch.jit.export
    def layer_messages(
        self, member: int, layer: int, h: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor,
        radial: torch.Tensor, n_mirrored: int, n_out: int,
    ) -> torch.Tensor:
        return self.potential.layer_messages(member, layer, h, edge_index, sh, radial, n_mirrored, n_out)

    @torch.jit.export
    def layer_update(
        self, member: int, layer: int, h: torch.Tensor, messages: torch.Tensor, species: torch.Tensor
    ) -> torch.Tensor:
        return self.potential.layer_update(member, layer, h, messages, species)

    @torch.jit.export
    def layer_readout(self, member: int, h: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.potential.layer_readout(member, h, species)


class PackagedEnsemble(PackagedModel):
    """A packaged committee: every entry of PackagedModel gives the committee mean; uncertainty() the spread."""

    @torch.jit.export
    def local_member_energies(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
    ) -> torch.Tensor:
        return self.potential.member_energies(species, edge_index, edge_vectors)[:, :n_local]

    @torch.jit.export
    def local_energies_of_member(
        self, member: int, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
    ) -> torch.Tensor:
        return self.potential.member_energy(member, species, edge_index, edge_vectors)[:n_local]

    @torch.jit.export
    def uncertainty(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor,
        compute_stress: bool
    ) -> dict[str, torch.Tensor]:
        stress = compute_stress and bool(pbc.all())
        species, g, strained = self._checked_strained_edges(positions, cell, numbers, pbc, stress)
        members, member_forces, stresses = self._committee_properties(
            strained, g[2].unsqueeze(0), species, g[0], numbers, pbc, g[0].shape[1] // 2, stress
        )  # [K, N], [K, N, 3], [K, 3, 3]
        energies = members.sum(1)  # [K]
        mean_forces = member_forces.mean(0)
        dev = member_forces - mean_forces.unsqueeze(0)
        out: dict[str, torch.Tensor] = {
            "energy": energies.detach().mean(),
            "atomic_energies": members.detach().mean(0),
            "forces": mean_forces,
            "energy_std": committee_spread(energies.detach()),
            "atomic_energies_std": committee_spread(members.detach()),
            "forces_std": (dev * dev).sum(2).mean(0).sqrt(),
            "member_energies": energies.detach(),
            "member_forces": member_forces,
        }
        if stress:
            out["stress"] = stresses.mean(0)
        result: dict[str, torch.Tensor] = {}
        for key, value in out.items():
            result[key] = value.detach()
        return result


class PackagedWithVariance(PackagedModel):
    """A model with an aleatoric head: atomic_variances() gives each atom's predicted energy variance (eV²);
    the energy's predicted standard deviation is the square root of their sum."""

    @torch.jit.export
    def atomic_variances(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor
    ) -> torch.Tensor:
        species, g, vec = self._checked_edges(positions, cell, numbers, pbc)
        return self.potential.energies_and_variances(species, g[0], vec, g[0].shape[1] // 2)[1].detach()


class PackagedLayeredEnsemble(PackagedEnsemble, PackagedLayered):
    """A committee of message-passing members: PackagedEnsemble's entries plus the layer-by-layer ones."""


class PackagedLayeredWithVariance(PackagedWithVariance, PackagedLayered):
    """A model with an aleatoric head whose network also runs layer by layer."""
