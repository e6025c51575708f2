"""DFT-D3 dispersion with Becke-Johnson (rational) damping, optional Axilrod-Teller-Muto three-body term.

E_disp = -sum_{pairs} [ s6 C6_ij / (r^6 + R0^6) + s8 C8_ij / (r^8 + R0^8) ]  (+ E_ATM)
         R0 = a1 sqrt(C8/C6) + a2,  C8_ij = 3 C6_ij r4r2_i r4r2_j
(Grimme, Antony, Ehrlich, Krieg, J. Chem. Phys. 132, 154104 (2010); Grimme, Ehrlich, Goerigk,
J. Comput. Chem. 32, 1456 (2011)). The sum runs over all pairs and periodic images within the cutoff.

C6_ij depends on the coordination numbers: CN_i = sum_j 1 / (1 + exp(-16 (R_cov,i + R_cov,j) / r_ij + 16))
over all neighbours within ``cutoff_cn``; C6_ij = sum_ab w_ia w_jb C6ref[Z_i, Z_j, a, b] with Gaussian
weights w_ia proportional to exp(-4 (CN_i - CNref_ia)^2), normalised over the references of Z_i. The
reference tables (C6ref, CNref, covalent radii, r4r2, pairwise vdW radii) are the standard D3 data, stored
in ``d3_data/d3_reference.npz`` (see ``d3_data/extract.py``); Z = 1-103 (H-Lr) are covered.

Three-body term (``three_body=True``, s9 != 0), as in simple-dftd3 for BJ damping:
E_ATM = sum_{triples} s9 sqrt(C6_ij C6_ik C6_jk) (3 cos a cos b cos c + 1) / (r_ij r_ik r_jk)^3 * f,
f = 1 / (1 + 6 (prod(4/3 R0vdw) / prod(r))^(16/3)): zero damping with the scaled pairwise vdW radii
(alp + 2 = 16), not the BJ radii. Its cost grows with (neighbours within ``cutoff_three_body``)^2 per atom
(about 1e8 triples for a 192-atom water box at the standard 40 bohr, 1-3 minutes on one core); the triples are
evaluated in chunks of ``atm_chunk`` with analytic first derivatives (mlmd.model.dispersion_atm), so memory is
bounded by the chunk, not by the cutoff (forces and stress exact; no second derivatives of the ATM part).

Cutoffs (sharp, as in simple-dftd3 with its default zero smoothing width): two-body 60 bohr (31.75 Å),
coordination number 40 bohr (21.17 Å), three-body 40 bohr (21.17 Å) -- simple-dftd3's defaults, so energies
match it. They can be lowered for speed: the two-body tail beyond r_c is about -2 pi n <C6> / (3 r_c^3) per
atom (n the number density), e.g. ~2e-4 eV/atom for water at 15 Å. Note that the D3 counting function
tends to 1/(1+e^16) = 1.1e-7 (not 0) at long range, so CN (and the energy) depends on ``cutoff_cn`` at the
1e-4 level in condensed phases: match it when comparing codes.

Short cutoffs for production (mlmd.model.dispersion_pairs): ``smooth_width`` (Å, default 0 = sharp) switches
the two-body and CN terms off smoothly (C2) over [cutoff - width, cutoff], so MD conserves energy;
``tail_correction=True`` adds the mean-field two-body energy beyond the cutoff (pair distribution 1 there,
3D-periodic cells only; the volume dependence gives its pressure). For 3,072 water atoms, 7 Å (CN 7 Å, width
2 Å) with the tail is within 0.03 meV/atom of the standard cutoffs at ~1/12 of their cost; see
benchmarks/d3_cutoffs.py and benchmarks/RESULTS.md. Inhomogeneous systems (slabs, interfaces, clusters) get no
or a wrong tail: use longer cutoffs there (12 Å, width 3 Å: 0.56 meV/atom for water without the tail).
The two-body energy's derivatives are done by hand (mlmd.model.dispersion_two_body: d/d(r^2) of every pair, the
C6 dependence chained through the coordination numbers) and enter autograd as one zero-valued term on the positions
and the cell: exact forces and stress of the energy summed over atoms, whose per-atom shares are exact values but do
not differentiate one by one (as the ATM term's); the engines differentiate sums only, and a domain-decomposed one
uses the graph entries (their sums over a rank's atoms differentiate exactly). No second derivatives. With a smooth
cutoff the pairs come from the Verlet list's second level (pair_cache.VerletPairs.near, up to cutoff + skin / 2: the
pair terms vanish beyond the cutoff), so no call selects the exact pairs.

Damping parameters (``D3BJ_PARAMETERS``, from the simple-dftd3 database): choose the functional of the
reference method. For a GFN2-xTB reference, whose total energy already contains its own D4 dispersion
(BJ damping with s8 = 2.7, a1 = 0.52, a2 = 5.0, ATM s9 = 5.0; Bannwarth et al., JCTC 15, 1652 (2019)),
use ``functional="gfn2"``: D3 with GFN2's damping, the closest D3 analogue of what the reference contains,
so that the short-range model learns only the (short-ranged) D4-D3 difference; never add a DFT-D3
parameter set (e.g. PBE) on top of a GFN2 reference -- that would count dispersion twice.

Units: positions and cell in Å; the term works in bohr and hartree internally (BOHR_TO_ANGSTROM,
HARTREE_TO_EV from mlmd.units) and returns eV. TorchScript-compatible; forces and stress by autograd through
``positions`` and ``cell``.
"""

from typing import Any, List, Optional, Tuple

import torch
from ase.data import chemical_symbols
from torch import nn

from mlmd.model.d3_parameters import (
    ALP,
    CUTOFF_CN_BOHR,
    CUTOFF_DISP2_BOHR,
    CUTOFF_DISP3_BOHR,
    K_CN,
    MAX_Z,
    RS9,
    WEIGHT_FACTOR,
    damping_parameters,
    element_tables,
)
from mlmd.model.dispersion_atm import c6_inputs, three_body_energies
from mlmd.model.dispersion_graph import (
    graph_cn,
    graph_cn_by_hand,
    graph_tail,
    graph_two_body,
    graph_two_body_given_cn,
    graph_two_body_whole_pairs_given_cn,
    graph_whole_pairs_by_hand,
)
from mlmd.model.dispersion_graph_atm import graph_three_body
from mlmd.model.dispersion_pairs import cn_count_terms, damping_terms, switch_of_r2, tail_integrals
from mlmd.model.dispersion_two_body import (
    add_both,
    c6_factors,
    on_pairs,
    pair_energies,
    tail_terms,
    through_cn,
    weights_and_slopes,
)
from mlmd.model.pair_cache import DEFAULT_NL_SKIN, VerletPairs
from mlmd.units import BOHR_TO_ANGSTROM, ENERGY_UNIT, HARTREE_TO_EV, LENGTH_UNIT


class D3Dispersion(nn.Module):
    """DFT-D3(BJ) dispersion energy (eV) of a structure; see the module docstring.

    forward(positions [N,3] Å, cell [3,3] Å (rows = lattice vectors), numbers [N] atomic numbers,
            pbc [3] bool) -> energy []
    atomic_energies(...) -> [N] (pair energies split evenly; ATM triples in thirds).
    ``atomic_numbers``: the elements it will see (tables are kept for these only; None: all of H-Lr).
    Explicit s6/s8/a1/a2/s9 override the functional's values; cutoffs are in Å (None: the standard ones).
    """

    __jit_ignored_attributes__ = ["params"]
    atomic_numbers: list[int]
    symbols: list[str]

    def __init__(
        self,
        atomic_numbers: Optional[list[int]] = None,
        functional: str = "pbe",
        three_body: bool = False,
        s6: Optional[float] = None,
        s8: Optional[float] = None,
        a1: Optional[float] = None,
        a2: Optional[float] = None,
        s9: Optional[float] = None,
        cutoff: Optional[float] = None,
        cutoff_three_body: Optional[float] = None,
        cutoff_cn: Optional[float] = None,
        dense_c6_max_atoms: int = 8000,
        atm_chunk: int = 1 << 19,
        smooth_width: float = 0.0,
        tail_correction: bool = False,
        nl_skin: float = DEFAULT_NL_SKIN,
    ) -> None:
        super().__init__()
        if atomic_numbers is None:
            atomic_numbers = list(range(1, MAX_Z + 1))
        zs = [int(z) for z in atomic_numbers]
        if len(set(zs)) != len(zs):
            raise ValueError("atomic_numbers must be unique")
        for z in zs:
            if not 1 <= z <= MAX_Z:
                name = chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?"
                raise ValueError(
                    f"element {name} (Z={z}) has no DFT-D3 reference data (D3 covers Z = 1-{MAX_Z}, H-Lr)"
                )
        p = damping_parameters(functional)
        for key, value in (("s6", s6), ("s8", s8), ("a1", a1), ("a2", a2), ("s9", s9)):
            if value is not None:
                p[key] = float(value)
        if not three_body:
            p["s9"] = 0.0
        self.atomic_numbers = zs
        self.functional: str = functional
        self.s6: float = float(p["s6"])
        self.s8: float = float(p["s8"])
        self.a1: float = float(p["a1"])
        self.a2: float = float(p["a2"])
        self.s9: float = float(p["s9"])
        self.three_body: bool = bool(three_body) and self.s9 != 0.0
        self.alp_atm: float = ALP + 2.0
        bohr = BOHR_TO_ANGSTROM
        self.cutoff: float = CUTOFF_DISP2_BOHR if cutoff is None else float(cutoff) / bohr
        self.cutoff3: float = CUTOFF_DISP3_BOHR if cutoff_three_body is None else float(cutoff_three_body) / bohr
        self.cutoff_cn: float = CUTOFF_CN_BOHR if cutoff_cn is None else float(cutoff_cn) / bohr
        self.dense_c6_max_atoms: int = int(dense_c6_max_atoms)
        if atm_chunk < 1:
            raise ValueError(f"atm_chunk must be positive, got {atm_chunk}")
        self.atm_chunk: int = int(atm_chunk)
        self.smooth_width: float = float(smooth_width) / bohr
        if smooth_width < 0 or (smooth_width > 0 and self.smooth_width >= min(self.cutoff, self.cutoff_cn)):
            raise ValueError(f"smooth_width must be >= 0 and below the two-body and CN cutoffs, got {smooth_width}")
        self.bohr: float = bohr
        self.hartree: float = HARTREE_TO_EV
        self.symbols = list(chemical_symbols)
        self.max_z: int = MAX_Z
        self.k_cn: float = K_CN
        self.weight_factor: float = WEIGHT_FACTOR
        self.nl_cutoff: float = max(self.cutoff, self.cutoff_cn, self.cutoff3 if self.three_body else 0.0)
        # pairs: a Verlet list reused between MD steps (mlmd.model.pair_cache; skin in Å, 0: rebuilt every call)
        self.pairs = VerletPairs(self.nl_cutoff, float(nl_skin) / bohr)

        t = element_tables(zs)
        table = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(zs):
            table[z] = k
        self.register_buffer("z_to_species", table)
        self.register_buffer("ref_c6", t["ref_c6"])
        self.register_buffer("ref_cn", t["ref_cn"])
        self.register_buffer("ref_valid", t["ref_valid"])
        self.register_buffer("rcov", t["rcov"])
        rrij = 3.0 * t["r4r2"][:, None] * t["r4r2"][None, :]  # C8/C6
        r0 = self.a1 * torch.sqrt(rrij) + self.a2  # BJ radius (bohr)
        rc = t["rcov"][:, None] + t["rcov"][None, :]
        # per species pair (flat index s_i * S + s_j): K_CN * (R_cov,i + R_cov,j), R0^6, R0^8, s8 C8/C6
        self.register_buffer("pair_krc", (K_CN * rc).reshape(-1))
        self.register_buffer("pair_r0_6", r0.pow(6).reshape(-1))
        self.register_buffer("pair_r0_8", r0.pow(8).reshape(-1))
        self.register_buffer("pair_s8rr", (self.s8 * rrij).reshape(-1))
        self.register_buffer("r0_atm", RS9 * t["rvdw"])
        self.n_species: int = len(zs)
        # marks the two-body derivatives done by hand (dispersion_two_body): repackaging rebuilds D3 without it
        self.hand_derivatives: bool = True
        self.tail_correction: bool = bool(tail_correction)
        self.register_buffer("tail_integral", torch.tensor(tail_integrals(
            r0.numpy(), (self.s8 * rrij).numpy(), self.s6, self.cutoff, self.smooth_width)))
        self.params = {
            "kind": "d3bj",
            "functional": functional,
            "s6": self.s6, "s8": self.s8, "a1": self.a1, "a2": self.a2, "s9": self.s9,
            "three_body": self.three_body,
            "alp_atm": self.alp_atm,
            "rs9": RS9,
            "cutoff": self.cutoff * bohr,
            "cutoff_three_body": self.cutoff3 * bohr,
            "cutoff_cn": self.cutoff_cn * bohr,
            "cutoff_bohr": self.cutoff,
            "cutoff_three_body_bohr": self.cutoff3,
            "cutoff_cn_bohr": self.cutoff_cn,
            "smooth_width": self.smooth_width * bohr,
            "tail_correction": self.tail_correction,
            "atomic_numbers": zs,
            "bohr_to_angstrom": bohr,
            "hartree_to_ev": HARTREE_TO_EV,
            "units": {"length": LENGTH_UNIT, "energy": ENERGY_UNIT},
            "reference": "DFT-D3 reference C6 (Grimme 2010), simple-dftd3 conventions",
        }

    @torch.jit.unused
    def metadata(self) -> dict[str, Any]:
        """Plain dict of the settings, for a packaged model's metadata (JSON-serialisable).

        kind ("d3bj"), functional, s6, s8, a1, a2 (bohr), s9 (0 without ATM), three_body, alp_atm, rs9,
        cutoff / cutoff_three_body / cutoff_cn in Å and in bohr, atomic_numbers, the unit constants used.
        LAMMPS: ``pair_style dispersion/d3 bj <functional> <cutoff Å> <cutoff_cn Å>`` computes the same model
        (with its own, slightly older bohr/hartree constants).
        """
        return dict(self.params)

    @torch.jit.export
    def species_of(self, numbers: torch.Tensor) -> torch.Tensor:
        if numbers.numel() > 0 and (bool((numbers < 1).any()) or bool((numbers > 118).any())):
            raise ValueError("atomic numbers must be between 1 and 118")
        species = self.z_to_species[numbers]
        if bool((species < 0).any()):
            z = int(numbers[species < 0][0])
            if z > self.max_z:
                raise ValueError(
                    "element " + self.symbols[z] + " (Z=" + str(z) + ") has no DFT-D3 reference data "
                    + "(D3 covers Z = 1-103, H-Lr)"
                )
            raise ValueError(
                "element " + self.symbols[z] + " (Z=" + str(z) + ") is not among this D3 term's elements (Z="
                + str(self.atomic_numbers) + ")"
            )
        return species

    @torch.jit.export
    def atomic_energies(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor
    ) -> torch.Tensor:
        if positions.dim() != 2 or positions.shape[1] != 3 or numbers.shape[0] != positions.shape[0]:
            raise ValueError("positions must have shape [N, 3] and numbers shape [N]")
        if positions.dtype != self.ref_c6.dtype:
            raise ValueError(
                "positions must have the module's dtype (" + str(self.ref_c6.dtype) + "); call .to(dtype) on it"
            )
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or infinity")
        species = self.species_of(numbers)
        n = positions.shape[0]
        periodic = bool(pbc.any())
        pos = positions / self.bohr
        if periodic:
            if not bool(torch.isfinite(cell).all()) or float(torch.abs(torch.linalg.det(cell.detach()))) < 1e-6:
                raise ValueError("periodic system given no cell (zero volume): set the box or pbc=False")
            box = cell / self.bohr
        else:
            box = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device)
        # everything by hand, under no_grad: openmm-torch freezes the module, and freezing drops detach()
        with torch.no_grad():
            parts = self._two_body(pos, box, pbc, species, pos.requires_grad or box.requires_grad)
        atomic, grad_vec, i, j, shifts, tail = parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]
        if tail.numel() > 0:
            atomic = atomic + tail / torch.abs(torch.linalg.det(box))  # the tail's 1/V by autograd (the stress)
        # one term with the derivatives of the sum, its value taken off again (zero, exactly)
        linear = torch.zeros((), dtype=pos.dtype, device=pos.device)
        if pos.requires_grad:  # forces
            with torch.no_grad():
                grad_pos = torch.zeros(n, 3, dtype=pos.dtype, device=pos.device).scatter_add(
                    0, j.unsqueeze(1).expand(-1, 3), grad_vec)
                grad_pos = grad_pos.scatter_add(0, i.unsqueeze(1).expand(-1, 3), -grad_vec)
            linear = linear + (grad_pos * pos).sum()
        if periodic and box.requires_grad:  # stress
            with torch.no_grad():
                grad_box = shifts.t() @ grad_vec
            linear = linear + (grad_box * box).sum()
        with torch.no_grad():
            offset = linear.clone()
        if n > 0:  # on the first atom: its derivative reaches the sum with weight 1 exactly (no 1/n rounding)
            atomic = torch.cat([atomic[:1] + (linear - offset), atomic[1:]])
        return atomic * self.hartree

    def _two_body(
        self, pos: torch.Tensor, box: torch.Tensor, pbc: torch.Tensor, species: torch.Tensor, need_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values without autograd (the caller runs it under no_grad): (two-body energy per atom (hartree), with
        the ATM term's when it is on, d(sum)/d(pair vector), i, j, float shifts, V E_tail per atom (empty without
        the tail))."""
        n = pos.shape[0]
        # the listed pairs with their vectors and r^2 (bohr), from the Verlet filter's own arithmetic, no autograd;
        # with a smooth cutoff the pair terms vanish beyond it, so pairs a little beyond it may be listed too
        if self.smooth_width > 0.0:
            i, j, shifts, vec, r2 = self.pairs.near(pos, box, pbc)
        else:
            i, j, shifts, vec, r2 = self.pairs.within(pos, box, pbc)
        if r2.numel() > 0 and float(r2.min()) < 1e-8:
            k = int(torch.argmin(r2))
            raise ValueError("atoms " + str(int(i[k])) + " and " + str(int(j[k])) + " are at the same position")
        sj = species.index_select(0, j)
        # per pair: K_CN (R_cov,i + R_cov,j), R0^6, R0^8, s8 C8/C6 in one gather
        params = torch.stack([self.pair_krc, self.pair_r0_6, self.pair_r0_8, self.pair_s8rr]).index_select(
            1, species.index_select(0, i) * self.n_species + sj)

        # coordination numbers (pairs within cutoff_cn; a self-image pair counts for both of its ends)
        sel_cn = self._within(r2, self.cutoff_cn)
        i_cn, j_cn, sj_cn, p_cn, r2_cn = i, j, sj, params, r2
        if sel_cn is not None:
            i_cn, j_cn, sj_cn = i.index_select(0, sel_cn), j.index_select(0, sel_cn), sj.index_select(0, sel_cn)
            p_cn, r2_cn = params.index_select(1, sel_cn), r2.index_select(0, sel_cn)
        sw_cn = switch_of_r2(r2_cn, self.cutoff_cn, self.smooth_width)
        count, count_slope = cn_count_terms(r2_cn, p_cn[0], self.k_cn, self.cutoff_cn, self.smooth_width, sw_cn)
        cn = add_both(n, i_cn, j_cn, i_cn.shape[0], count)
        w, dw = weights_and_slopes(species, cn, self.ref_cn, self.ref_valid.to(pos.dtype), self.weight_factor)

        # two-body BJ-damped C6 and C8 terms, C6 per pair (no N x N matrix); the CN pairs' switch when the same
        sel = sel_cn
        i2, j2, sj2, p2, r2s, sw = i_cn, j_cn, sj_cn, p_cn, r2_cn, sw_cn
        if self.cutoff != self.cutoff_cn:
            sel = self._within(r2, self.cutoff)
            i2, j2, sj2, p2, r2s = i, j, sj, params, r2
            if sel is not None:
                i2, j2, sj2 = i.index_select(0, sel), j.index_select(0, sel), sj.index_select(0, sel)
                p2, r2s = params.index_select(1, sel), r2.index_select(0, sel)
            sw = switch_of_r2(r2s, self.cutoff, self.smooth_width)
        dval, dslope = damping_terms(r2s, p2[1], p2[2], p2[3], self.s6, self.cutoff, self.smooth_width, sw)
        tables = c6_factors(species, w, dw, self.ref_c6, self.n_species)
        atomic, slope, de_dcn = pair_energies(n, i2, j2, i2.shape[0], sj2, dval, dslope, tables, self.n_species, None)
        tail = torch.zeros(0, dtype=pos.dtype, device=pos.device)
        if self.tail_correction and bool(pbc.all()):
            # mean-field two-body energy beyond the cutoff (dispersion_pairs): V E_tail here, its 1/V by the caller
            tail, tail_dcn = tail_terms(species, w, tables, self.tail_integral, self.n_species)
            de_dcn = de_dcn + tail_dcn / torch.abs(torch.linalg.det(box))
        grad_atm = torch.zeros(0, dtype=pos.dtype, device=pos.device)
        if self.three_body:
            atomic_atm, grad_atm, de_dw_atm = self._three_body(vec, r2, i, j, species, w, need_grad)
            atomic = atomic + atomic_atm
            de_dcn = de_dcn + (de_dw_atm * dw).sum(1)
        through = through_cn(i_cn, j_cn, i_cn.shape[0], count_slope, de_dcn)

        # d(sum)/d(r^2) of every listed pair, and d(sum)/d(vector)
        if sel is None and sel_cn is None:
            slope = slope + through
        else:
            slope = on_pairs(r2.shape[0], sel, slope) + on_pairs(r2.shape[0], sel_cn, through)
        grad_vec = (2.0 * slope).unsqueeze(1) * vec
        if self.three_body:
            grad_vec = grad_vec + grad_atm
        return atomic, grad_vec, i, j, shifts, tail

    def _within(self, r2: torch.Tensor, cutoff: float) -> Optional[torch.Tensor]:
        """Indices of the listed pairs within ``cutoff`` (bohr), or None when that is all of them."""
        if cutoff >= self.nl_cutoff:
            return None
        return torch.nonzero(r2 <= cutoff * cutoff).squeeze(1)

    def _three_body(
        self, vec: torch.Tensor, r2: torch.Tensor, i: torch.Tensor, j: torch.Tensor, species: torch.Tensor,
        w: torch.Tensor, need_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ATM energies (hartree) of the listed pairs (bohr) with d(sum)/d(pair vector) and d(sum)/d(CN weights),
        no autograd (mlmd.model.dispersion_atm); the caller chains the weights' part through the CN."""
        n = species.shape[0]
        u, c6_matrix = c6_inputs(w, species, self.ref_c6, self.dense_c6_max_atoms)
        return three_body_energies(vec, r2, i, j, species, u, w, c6_matrix, n, self.r0_atm, self.s9, self.alp_atm,
                                   self.cutoff3, self.atm_chunk, need_grad)

    def forward(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, pbc: torch.Tensor
    ) -> torch.Tensor:
        return self.atomic_energies(positions, cell, numbers, pbc).sum()

    # ------------------------------------------------------------ on an engine's graph (mlmd.model.dispersion_graph)

    @torch.jit.export
    def graph_energies(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two-body energies (eV) of nodes [0, n_local) of an engine's graph, their CN weights, and the weights
        summed per species (see dispersion_graph.graph_two_body). No tail, no three-body term."""
        tables, settings = self._graph_tables()
        return graph_two_body(self.species_of(numbers), edge_index, vectors, n_local, n_mirrored, self.n_species,
                              tables, settings)

    @torch.jit.export
    def graph_cn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> torch.Tensor:
        """Coordination numbers of nodes [0, n_local) from their edges (dispersion_graph.graph_cn)."""
        tables, settings = self._graph_tables()
        return graph_cn(self.species_of(numbers), edge_index, vectors, n_local, n_mirrored, self.n_species, tables,
                        settings)

    @torch.jit.export
    def graph_energies_given_cn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, cn: torch.Tensor,
        n_mirrored: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """graph_energies given the coordination numbers of every node (dispersion_graph.graph_two_body_given_cn)."""
        tables, settings = self._graph_tables()
        return graph_two_body_given_cn(self.species_of(numbers), edge_index, vectors, n_local, n_mirrored, cn,
                                       self.n_species, tables, settings)

    @torch.jit.export
    def graph_energies_whole_pairs_given_cn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int, cn: torch.Tensor,
        n_mirrored: int, ghost_pairs: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """graph_energies_given_cn with each pair across ranks on one rank (the edges to ghosts in ghost_pairs)
        and the energies of every node (dispersion_graph.graph_two_body_whole_pairs_given_cn)."""
        tables, settings = self._graph_tables()
        return graph_two_body_whole_pairs_given_cn(self.species_of(numbers), edge_index, vectors, n_local,
                                                   n_mirrored, cn, ghost_pairs, self.n_species, tables, settings)

    @torch.jit.export
    def graph_cn_by_hand(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        n_mirrored: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CN of nodes [0, n_local), dCN/d(r^2) per edge (Å^-2), their weights summed per species): graph_cn
        without autograd (dispersion_graph.graph_cn_by_hand)."""
        tables, settings = self._graph_tables()
        return graph_cn_by_hand(self.species_of(numbers), edge_index, vectors, n_local, n_mirrored, self.n_species,
                                tables, settings)

    @torch.jit.export
    def graph_whole_pairs_by_hand(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        n_mirrored: int, cn: torch.Tensor, ghost_pairs: torch.Tensor, weight_sums: torch.Tensor, volume: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """graph_energies_whole_pairs_given_cn and the tail (volume Å^3 > 0 and the tail on) without autograd:
        (energies of every node, dE/d(r^2) per edge, dE/dCN per node, the tail part) in eV and Å
        (dispersion_graph.graph_whole_pairs_by_hand)."""
        tables, settings = self._graph_tables()
        volume_bohr3 = volume / (self.bohr ** 3) if self.tail_correction else 0.0
        return graph_whole_pairs_by_hand(self.species_of(numbers), edge_index, vectors, n_local, n_mirrored, cn,
                                         ghost_pairs, weight_sums, volume_bohr3, self.n_species, tables,
                                         self.tail_integral, settings)

    @torch.jit.export
    def graph_three_body_energies(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, n_local: int,
        cn: torch.Tensor, atom_ids: torch.Tensor,
    ) -> torch.Tensor:
        """ATM energies (eV) of every node of an engine's graph from the triples at its local nodes, given every
        node's CN and atom ID (dispersion_graph_atm.graph_three_body); zeros without the three-body term."""
        if not self.three_body:
            return torch.zeros(numbers.shape[0], dtype=vectors.dtype, device=vectors.device)
        tables = [self.ref_cn, self.ref_valid.to(self.ref_cn.dtype), self.ref_c6, self.r0_atm]
        settings = [self.bohr, self.cutoff3, self.weight_factor, self.s9, self.alp_atm, self.hartree]
        return graph_three_body(self.species_of(numbers), edge_index, vectors, n_local, cn, atom_ids, tables,
                                settings, self.atm_chunk, self.dense_c6_max_atoms)

    def _graph_tables(self) -> Tuple[List[torch.Tensor], List[float]]:
        """The tables and settings the two-body graph functions take (see dispersion_graph.graph_two_body): the
        three-body term, when on, is the engine's separate call (graph_three_body_energies)."""
        tables = [self.pair_krc, self.ref_cn, self.ref_valid.to(self.ref_cn.dtype), self.ref_c6, self.pair_r0_6,
                  self.pair_r0_8, self.pair_s8rr]
        settings = [self.bohr, self.cutoff, self.cutoff_cn, self.smooth_width, self.k_cn, self.weight_factor, self.s6,
                    self.hartree, 1.0 if self.tail_correction else 0.0]
        return tables, settings

    @torch.jit.export
    def graph_tail(
        self, numbers: torch.Tensor, weights: torch.Tensor, weight_sums: torch.Tensor, volume: float
    ) -> torch.Tensor:
        """Tail-correction energies (eV) of local atoms given every rank's weight sums added up and the cell
        volume (Å^3); see dispersion_graph.graph_tail."""
        species = self.species_of(numbers)
        return graph_tail(species, weights, weight_sums, volume / (self.bohr ** 3), self.ref_c6,
                          self.tail_integral) * self.hartree
