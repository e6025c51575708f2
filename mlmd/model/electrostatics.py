"""Long-range electrostatics of point charges: Ewald / PME (periodic) and the direct Coulomb sum (molecules).

E = k_e * sum_{i<j} q_i q_j / r_ij over all pairs and periodic images, in eV (k_e = COULOMB_EV_A,
lengths in Å, charges in e). TorchScript-compatible, float32 or float64; forces and stress come from
autograd through ``positions`` and ``cell`` (a strain applied to both gives the stress); the real-space sum and
PME's mesh hand autograd their first derivatives as zero-valued terms (``_real_space``, ``_PME._compute_kspace``),
so only the sum of the per-atom energies differentiates exactly, and not twice in the positions.

Summation (torch-pme 0.5.0 does the reciprocal part; the real-space pairs come from vesin):
- ``direct``: non-periodic systems, all pairs i<j (O(N^2));
- ``ewald``: Ewald sum with Gaussian splitting of width ``smearing`` sigma (alpha = 1/(sqrt(2) sigma)):
  real-space pairs within ``r_cut``, reciprocal vectors up to ``k_cutoff`` (torch-pme sums the whole box
  |m_i| <= k_c |a_i| / 2 pi of reciprocal-lattice indices, which contains that sphere); O(N^2);
- ``pme``: particle-mesh Ewald (Darden et al. 1993: Lagrange interpolation of ``interpolation_order`` nodes
  per axis, 4 or 6) on a mesh of n_i = smallest 2^a 3^b 5^c >= |a_i| / ``grid_spacing`` points; O(N log N).
  With an even number of nodes the energy is continuous in the positions and the forces (its exact
  gradient) jump by about the mesh error where an atom crosses a mesh plane; with an odd number (measured
  here for torch-pme 0.5.0) the energy itself jumps at the midplanes, so odd orders are not offered.
  ``pme_assignment="bspline"`` (parameter key) assigns with smooth PME's B-splines instead and divides the
  kernel by their |b(m)|^2 (Essmann et al. 1995): the same accuracy on a mesh 1.8x coarser per axis (order 6);
  both run through mlmd.model.pme_mesh;
- ``auto``: direct without pbc, Ewald up to ``ewald_max_atoms`` atoms, PME above.
(torch-pme's P3M is not offered: measured here on a triclinic rock-salt cell its error fell only slowly with
the mesh and grew with the assignment order, while it is fine for orthorhombic cells.)

Parameters from an accuracy: the error estimates, the choice of parameters, mesh sizes and memory, and the
translation to OpenMM and LAMMPS live in ``mlmd.ewald_params`` (plain math, importable by engines); they are
re-exported here. Parameters are chosen for a reference charge density when a model is built, and for a
structure's own charges and cell by ``Electrostatics.tune(charges, cell)`` (TorchScript-exported, so it works on
a packaged model; engines call it once at the start of a run, see ``tune_for_structure``). ``tune`` keeps the
accuracy, r_cut and interpolation order and re-chooses sigma, k_cut and the mesh spacing.
PME whose mesh would need more than ``max_memory`` bytes falls back to Ewald at the same accuracy when that fits,
and otherwise stops with an error naming the mesh and the memory.

Charges: fixed per element (``FixedCharges``) or predicted by a network and made to sum to the total
charge by ``enforce_total_charge``. A periodic cell with a net charge is refused unless
``neutralizing_background=True`` (then a uniform compensating background is implied, as in every Ewald
code; the energy of a charged cell then depends on the cell size).

``Electrostatics.metadata()`` gives the parameters as a plain dict, from which OpenMM's NonbondedForce or
LAMMPS's coul/long + kspace can be configured (``mlmd.ewald_params.openmm_pme_parameters``,
``lammps_kspace_parameters``).
"""

import math
from typing import Any, Optional

import torch
import torchpme
from ase.data import chemical_symbols
from torch import nn

from mlmd import ewald_params as ep
from mlmd.ewald_params import (
    DEFAULT_ACCURACY,
    DEFAULT_EWALD_MAX_ATOMS,
    DEFAULT_MAX_MEMORY,
    DEFAULT_ORDER,
    METHODS,
    choose_parameters,
    estimate_errors,
    mesh_dimensions,
    openmm_pme_parameters,
)
from mlmd.model import pme_mesh
from mlmd.model.pair_cache import DEFAULT_NL_SKIN, VerletPairs
from mlmd.units import COULOMB_EV_A

__all__ = [
    "DEFAULT_ACCURACY",
    "Electrostatics",
    "FixedCharges",
    "choose_parameters",
    "enforce_total_charge",
    "estimate_errors",
    "mesh_dimensions",
    "openmm_pme_parameters",
]


class _PME(torchpme.PMECalculator):
    """torch-pme's PME with mlmd's mesh rule (FFT-friendly sizes instead of powers of two) and mlmd's charge
    assignment (mlmd.model.pme_mesh: the same Lagrange scheme in a few vectorised operations)."""

    def __init__(
        self, potential: torchpme.CoulombPotential, grid_spacing: float, interpolation_nodes: int,
        assignment: str = "lagrange",
    ) -> None:
        super().__init__(potential, mesh_spacing=2.0 * grid_spacing, interpolation_nodes=interpolation_nodes)
        self.grid_spacing: float = float(grid_spacing)
        if assignment not in ep.PME_ASSIGNMENTS:
            raise ValueError(f"unknown PME assignment {assignment!r}; known: {', '.join(ep.PME_ASSIGNMENTS)}")
        self.bspline: bool = assignment == "bspline"
        # the mesh assignment is mlmd.model.pme_mesh's (torch-pme's Lagrange scheme in fewer tensor operations,
        # or smooth PME's B-splines with their |b(m)|^2 correction of the kernel)
        # (float64 attributes, not buffers: a term rebuilt by repackaging keeps the file's weights checksum)
        coefficients = pme_mesh.bspline_coefficients if self.bspline else pme_mesh.lagrange_coefficients
        self.coefficients = coefficients(interpolation_nodes)
        self.bspline_values = pme_mesh.bspline_node_values(interpolation_nodes)

    def _compute_kspace(
        self,
        charges: torch.Tensor,
        cell: torch.Tensor,
        positions: torch.Tensor,
        periodic: Optional[torch.Tensor] = None,
        node_mask: Optional[torch.Tensor] = None,
        kvectors: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        lengths = torch.linalg.norm(cell.detach(), dim=1)
        sizes: list[int] = []
        for k in range(3):
            sizes.append(ep.mesh_size(float(lengths[k]), self.grid_spacing))
        ns = torch.tensor(sizes, dtype=torch.long, device=cell.device)
        self.kspace_filter.update(cell, ns)
        kernel = self.kspace_filter._kfilter
        if self.bspline:
            values = self.bspline_values.to(dtype=kernel.dtype, device=kernel.device)
            b2 = [pme_mesh.bspline_moduli(sizes[k], values, kernel.shape[k]) for k in range(3)]
            kernel = kernel / (b2[0][:, None, None] * b2[1][None, :, None] * b2[2][None, None, :])
        coefficients = self.coefficients.to(dtype=positions.dtype, device=positions.device)
        # The mesh weights are taken without autograd, and the positions' gradient is put back by hand:
        # E = 1/2 sum_i q_i phi(u_i) with a symmetric kernel, so dE/du_i = q_i grad phi(u_i) (the gather's weights
        # alone; spreading contributes the same half). Adding q_i g_i . (u_i - u_i'), u' the same coordinates
        # computed under no_grad (zero in value), gives autograd that gradient without differentiating the p^3
        # weights of spreading and gathering; the charges' and the cell's gradients (kernel, volume) still flow
        # through the mesh. Exact first derivatives, and mixed ones in the charges (training); the positions'
        # Hessian of this term is not represented (nothing asks for it). no_grad, not detach(): openmm-torch
        # freezes the module, and freezing drops detach().
        inverse_cell = torch.linalg.inv(cell)
        u = pme_mesh.mesh_coordinates(positions, inverse_cell, sizes)
        with torch.no_grad():
            u_fixed = pme_mesh.mesh_coordinates(positions, inverse_cell, sizes)
            w, dw, base = pme_mesh.axis_weights(u_fixed, coefficients)
            flat = pme_mesh.flat_indices(base, sizes, coefficients.shape[0])
            weights = pme_mesh.outer_weights(w)
        rho_mesh = pme_mesh.spread(charges[:, 0], weights, flat, sizes)
        potential_mesh = torch.fft.irfftn(torch.fft.rfftn(rho_mesh) * kernel, s=sizes, norm="forward")  # as torch-pme
        ivolume = torch.abs(cell.det()).pow(-1)
        values, gradient = pme_mesh.gather_with_gradient(potential_mesh, w, dw, flat)
        phi = (values * ivolume).unsqueeze(1)
        # the Gaussian's self-potential, and the uniform background that neutralises a net charge
        phi = phi - charges * self.potential.self_contribution()
        phi = phi - 2 * self.potential.background_correction() * torch.sum(charges, dim=0) * ivolume
        return phi / 2 + ivolume * (gradient * (u - u_fixed)).sum(1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------
# charges


class FixedCharges(nn.Module):
    """Charges fixed per element: ``FixedCharges({8: -0.834, 1: 0.417})``; forward(numbers) -> charges [N]."""

    charges: dict[int, float]
    symbols: list[str]

    def __init__(self, charges: dict[int, float]) -> None:
        super().__init__()
        table = torch.full((119,), float("nan"), dtype=torch.float64)
        for z, q in charges.items():
            if not 1 <= int(z) <= 118:
                raise ValueError(f"atomic number {z} out of range 1..118")
            table[int(z)] = float(q)
        self.register_buffer("table", table)
        self.symbols = list(chemical_symbols)
        self.charges = {int(z): float(q) for z, q in charges.items()}

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        if numbers.numel() > 0 and (bool((numbers < 1).any()) or bool((numbers > 118).any())):
            raise ValueError("atomic numbers must be between 1 and 118")
        q = self.table[numbers]
        bad = torch.isnan(q)
        if bool(bad.any()):
            z = int(numbers[bad][0])
            raise ValueError(
                "no fixed charge for element " + self.symbols[z] + " (Z=" + str(z) + "); charges are set for Z="
                + str(sorted(self.charges.keys()))
            )
        return q


def enforce_total_charge(
    raw_charges: torch.Tensor,
    total_charge: torch.Tensor,
    batch: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Charges that sum to ``total_charge`` per structure: q_i = r_i - w_i (sum_j r_j - Q) / sum_j w_j.

    ``raw_charges`` [N] (a network head's output), ``total_charge`` [B] (or a 0-d tensor for one structure),
    ``batch`` [N] structure index (None: one structure), ``weights`` [N] > 0 (None: 1, the uniform shift).
    With weights w_i = 1/hardness_i this is the minimal change in the hardness metric, i.e. charge
    equilibration of the excess charge. Differentiable, so the network trains through it.
    """
    if batch is None:
        batch = torch.zeros(raw_charges.shape[0], dtype=torch.long, device=raw_charges.device)
    total = total_charge.to(raw_charges.dtype).reshape(-1)
    n_structures = total.shape[0]
    w = torch.ones_like(raw_charges) if weights is None else weights.to(raw_charges.dtype)
    zeros = torch.zeros(n_structures, dtype=raw_charges.dtype, device=raw_charges.device)
    excess = zeros.index_add(0, batch, raw_charges) - total
    w_sum = zeros.index_add(0, batch, w)
    return raw_charges - w * (excess / w_sum)[batch]


# ----------------------------------------------------------------------------------------------------------
# the energy term


class Electrostatics(nn.Module):
    """Coulomb energy (eV) of point charges; see the module docstring for methods and parameters.

    forward(positions [N,3] Å, cell [3,3] Å (rows = lattice vectors), pbc [3] bool, charges [N] e) -> energy []
    atomic_energies(...) -> [N] (E_i = q_i phi_i / 2, summing to the energy).
    pbc must be all True (Ewald/PME) or all False (direct sum; the cell is then ignored).
    Build from an accuracy (keyword overrides kept) or from stored metadata: Electrostatics(params=meta).
    """

    __jit_ignored_attributes__ = ["params"]

    def __init__(
        self,
        accuracy: float = DEFAULT_ACCURACY,
        method: str = "auto",
        r_cut: Optional[float] = None,
        smearing: Optional[float] = None,
        k_cutoff: Optional[float] = None,
        grid_spacing: Optional[float] = None,
        interpolation_order: int = DEFAULT_ORDER,
        ewald_max_atoms: int = DEFAULT_EWALD_MAX_ATOMS,
        neutralizing_background: bool = False,
        charge_tolerance: float = 1e-5,
        params: Optional[dict[str, Any]] = None,
        nl_skin: float = DEFAULT_NL_SKIN,
        **estimate_kwargs: Any,
    ) -> None:
        super().__init__()
        if params is None:
            params = choose_parameters(
                accuracy, method, r_cut, smearing, k_cutoff, grid_spacing, interpolation_order,
                ewald_max_atoms, neutralizing_background, **estimate_kwargs,
            )
        if params["method"] not in METHODS:
            raise ValueError(f"unknown electrostatics method {params['method']!r}; known: {', '.join(METHODS)}")
        self.params = dict(params)
        self.method: str = str(params["method"])
        self.accuracy: float = float(params["accuracy"])
        self.r_cut: float = float(params["r_cut"])
        self.smearing: float = float(params["smearing"])
        self.k_cutoff: float = float(params["k_cutoff"])
        self.interpolation_order: int = int(params["interpolation_order"])
        self.pme_assignment: str = str(params.get("pme_assignment", "lagrange"))
        self.engine_grid_spacing: float = float(params.get("engine_grid_spacing", params["grid_spacing"]))
        self.max_memory: float = float(params.get("max_memory", DEFAULT_MAX_MEMORY))
        self.q_factor: float = float(params.get("error_estimate_q_factor", 0.0))
        self.ewald_max_atoms: int = int(params["ewald_max_atoms"])
        self.neutralizing_background: bool = bool(params["neutralizing_background"])
        self.charge_tolerance: float = float(charge_tolerance)
        self.coulomb_constant: float = COULOMB_EV_A
        # torch-pme's Ewald keeps |m_i| <= ceil(|a_i| / lr_wavelength) / 2: lr_wavelength = pi / k_cutoff
        self.ewald = torchpme.EwaldCalculator(
            torchpme.CoulombPotential(smearing=self.smearing, prefactor=COULOMB_EV_A),
            lr_wavelength=math.pi / float(params["k_cutoff"]),
        )
        self.pme = _PME(
            torchpme.CoulombPotential(smearing=self.smearing, prefactor=COULOMB_EV_A),
            float(params["grid_spacing"]), int(params["interpolation_order"]),
            self.pme_assignment,
        )
        # real-space pairs: a Verlet list reused between MD steps (mlmd.model.pair_cache; skin in Å, 0: rebuilt
        # every call)
        self.pairs = VerletPairs(self.r_cut, nl_skin)
        # real space and PME differentiated by hand (see _real_space, _PME): repackaging rebuilds terms without it
        self.gradients_by_hand: bool = True
        self.register_buffer("_dtype_probe", torch.zeros((), dtype=torch.float64))

    @torch.jit.unused
    def metadata(self) -> dict[str, Any]:
        """Plain dict of the parameters, for a packaged model's metadata (JSON-serialisable).

        kind ("coulomb"), method, accuracy (+ accuracy_definition), coulomb_constant (eV Å), units,
        smearing sigma (Å), alpha = 1/(sqrt(2) sigma) (1/Å: LAMMPS g_ewald; OpenMM's alpha is 10x in 1/nm),
        r_cut (Å: OpenMM cutoff, LAMMPS coul/long cutoff), k_cutoff (1/Å, Ewald; lr_wavelength = pi / k_cutoff
        is torch-pme's EwaldCalculator parameter for it), grid_spacing (Å) and
        mesh_rule (PME mesh), interpolation_order (PME nodes per axis), ewald_max_atoms (auto switch),
        neutralizing_background, error_estimate_q_factor (the Q the parameters were chosen for), max_memory
        (bytes, the bound on the reciprocal-space part); with B-spline PME also pme_assignment and
        engine_grid_spacing (for the engines' own PME). After ``tune`` the values are the tuned ones.
        """
        out = dict(self.params)
        out.update(
            smearing=self.smearing,
            alpha=1.0 / (math.sqrt(2.0) * self.smearing),
            k_cutoff=self.k_cutoff,
            lr_wavelength=math.pi / self.k_cutoff,
            grid_spacing=self.pme.grid_spacing,
            error_estimate_q_factor=self.q_factor,
            max_memory=self.max_memory,
        )
        if self.pme_assignment != "lagrange":
            out.update(pme_assignment=self.pme_assignment, engine_grid_spacing=self.engine_grid_spacing)
        return out

    @torch.jit.export
    def tune(self, charges: torch.Tensor, cell: torch.Tensor) -> float:
        """Choose sigma, k_cut and the PME mesh spacing for this structure's own sum q^2, N and V (the
        accuracy, r_cut and interpolation order are kept); returns the Q factor used.

        Call once at the start of a run (``tune_for_structure``): the parameters then stay fixed, so the
        energy stays conservative. Charges [N] (e), cell [3, 3] (Å); a cell of zero volume is refused.
        """
        volume = abs(float(torch.linalg.det(cell.detach().to(torch.float64))))
        if not volume > 0.0:
            raise ValueError("tune needs a periodic cell (zero volume given)")
        sum_q2 = float((charges.detach().to(torch.float64) ** 2).sum())
        qf = ep.q_factor(max(sum_q2, 1e-12), int(charges.shape[0]), volume)
        part = self.accuracy / math.sqrt(2.0)
        smearing = ep.smearing_for(qf, part, self.r_cut)
        self.smearing = smearing
        self.k_cutoff = ep.k_cutoff_for(qf, part, smearing)
        self.q_factor = qf
        self.ewald.potential.smearing.fill_(smearing)
        self.ewald.lr_wavelength = math.pi / self.k_cutoff
        self.pme.potential.smearing.fill_(smearing)
        self.pme.grid_spacing = ep.grid_spacing_for(qf, part, smearing, self.interpolation_order, self.pme_assignment)
        self.engine_grid_spacing = ep.openmm_grid_spacing_for(qf, part, smearing)
        return qf

    def _check(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, charges: torch.Tensor) -> bool:
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError("positions must have shape [N, 3]")
        if charges.dim() != 1 or charges.shape[0] != positions.shape[0]:
            raise ValueError("charges must have shape [N] (one per atom)")
        if positions.dtype != self._dtype_probe.dtype or charges.dtype != positions.dtype:
            raise ValueError(
                "positions and charges must have the module's dtype (" + str(self._dtype_probe.dtype)
                + "); call .to(dtype) on the module"
            )
        if not bool(torch.isfinite(positions).all()) or not bool(torch.isfinite(charges).all()):
            raise ValueError("positions or charges contain NaN or infinity")
        n_periodic = int(pbc.to(torch.long).sum())
        if n_periodic != 0 and n_periodic != 3:
            raise ValueError(
                "electrostatics needs pbc all True (3D Ewald/PME) or all False (direct sum); got pbc=" + str(pbc)
            )
        periodic = n_periodic == 3
        if periodic:
            if cell.dim() != 2 or cell.shape[0] != 3 or cell.shape[1] != 3:
                raise ValueError("cell must have shape [3, 3]")
            if not bool(torch.isfinite(cell).all()) or float(torch.abs(torch.linalg.det(cell.detach()))) < 1e-6:
                raise ValueError("periodic system given no cell (zero volume): set the box or pbc=False")
            net = float(charges.detach().sum())
            if abs(net) > self.charge_tolerance and not self.neutralizing_background:
                raise ValueError(
                    "periodic cell has a net charge of " + str(net) + " e: Ewald/PME need a neutral cell. Fix "
                    + "the charges (enforce_total_charge) or build Electrostatics(neutralizing_background=True) "
                    + "to add a uniform compensating background"
                )
        return periodic

    def _direct(self, positions: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        n = positions.shape[0]
        pairs = torch.triu_indices(n, n, 1, device=positions.device)
        i = pairs[0]
        j = pairs[1]
        r = torch.linalg.norm(positions[j] - positions[i], dim=1)
        if r.numel() > 0 and float(r.detach().min()) < 1e-8:
            raise ValueError("two charges at the same position: the Coulomb energy is infinite")
        e = 0.5 * self.coulomb_constant * charges[i] * charges[j] / r
        return torch.zeros_like(charges).index_add(0, i, e).index_add(0, j, e)

    def _periodic(self, positions: torch.Tensor, cell: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        q = charges.unsqueeze(1)
        lengths = torch.linalg.norm(cell.detach(), dim=1)
        method = ep.choose_reciprocal(
            self.method, positions.shape[0], self.ewald_max_atoms,
            [float(lengths[0]), float(lengths[1]), float(lengths[2])], self.k_cutoff, self.pme.grid_spacing,
            self.max_memory,
        )
        if method == "ewald":
            phi = self.ewald._compute_kspace(q, cell, positions)
        else:
            phi = self.pme._compute_kspace(q, cell, positions)
        sigma = self.pme.potential.smearing if method == "pme" else self.ewald.potential.smearing
        return (q * phi).squeeze(1) + self._real_space(positions, cell, charges, sigma)

    def _real_space(
        self, positions: torch.Tensor, cell: torch.Tensor, charges: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """Half of each pair's k_e q_i q_j erfc(r / (sqrt(2) sigma)) / r to each of its atoms (what torch-pme's
        calculators add). The pair vectors come from the Verlet filter's own arithmetic without autograd, and the
        positions' and cell's gradients are put back by hand as one zero-valued term on the first atom (as in
        D3): sum_i g_i . (x_i - x_i') + sum (shifts^T G) . (cell - cell'), primes the same tensors copied under
        no_grad. The charges stay differentiable in the values and in g (training of predicted charges)."""
        n = positions.shape[0]
        pbc = torch.ones(3, dtype=torch.bool, device=positions.device)
        with torch.no_grad():
            i, j, shifts, vec, r2 = self.pairs.within(positions, cell, pbc)
            if r2.numel() > 0 and float(r2.min()) < 1e-16:
                raise ValueError("two charges at the same position: the Coulomb energy is infinite")
            inv_d = torch.rsqrt(r2)
            a = 1.0 / (math.sqrt(2.0) * sigma)
            ad = a * r2 * inv_d
            f = torch.erfc(ad) * inv_d  # erfc(a r) / r
            slope = -(f + (2.0 / math.sqrt(math.pi)) * a * torch.exp(-ad * ad)) * inv_d * inv_d  # (df/dr) / r
            positions_fixed = positions.clone()
            cell_fixed = cell.clone()
        qq = self.coulomb_constant * charges.index_select(0, i) * charges.index_select(0, j)
        pair = 0.5 * f * qq
        real = torch.zeros_like(charges).index_add(0, i, pair).index_add(0, j, pair)
        if n == 0 or not (positions.requires_grad or cell.requires_grad):
            return real
        g = (slope * qq).unsqueeze(1) * vec  # dE/d(pair vector)
        linear = torch.zeros((), dtype=positions.dtype, device=positions.device)
        if positions.requires_grad:
            grad_pos = torch.zeros_like(positions).index_add(0, j, g).index_add(0, i, -g)
            linear = linear + (grad_pos * (positions - positions_fixed)).sum()
        if cell.requires_grad:
            linear = linear + ((shifts.t() @ g) * (cell - cell_fixed)).sum()
        return torch.cat([real[:1] + linear, real[1:]])

    @torch.jit.export
    def atomic_energies(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, charges: torch.Tensor
    ) -> torch.Tensor:
        if self._check(positions, cell, pbc, charges):
            return self._periodic(positions, cell, charges)
        return self._direct(positions, charges)

    def forward(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, charges: torch.Tensor
    ) -> torch.Tensor:
        return self.atomic_energies(positions, cell, pbc, charges).sum()

    @torch.jit.unused
    def estimated_error(self, charges: torch.Tensor, cell: torch.Tensor) -> float:
        """Estimated RMS force error (eV/Å) of this module for a periodic structure (Python only), for the
        reciprocal method the structure gets (``auto`` rule and memory bound)."""
        params = self.metadata()
        est = estimate_errors(params, charges, cell)
        use_ewald = ep.reciprocal_method(params, cell, charges.numel()) == "ewald"
        return math.hypot(est["real"], est["ewald_kspace"] if use_ewald else est["pme_kspace"])

    @torch.jit.unused
    def warn_if_inaccurate(self, charges: torch.Tensor, cell: torch.Tensor) -> bool:
        """Warn (and return True) when the estimated error for this structure exceeds the target by more than
        rounding: its charge density is higher than the one the parameters were chosen for (``tune`` fixes it)."""
        err = ep.check_accuracy(self.metadata(), charges, cell)
        return ep.exceeds(err, self.accuracy * COULOMB_EV_A)

