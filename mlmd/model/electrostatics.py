"""Long-range electrostatics of point charges: Ewald / PME (periodic) and the direct Coulomb sum (molecules).

E = k_e * sum_{i<j} q_i q_j / r_ij over all pairs and periodic images, in eV (k_e = COULOMB_EV_A,
lengths in Å, charges in e). TorchScript-compatible, float32 or float64; forces and stress come from
autograd through ``positions`` and ``cell`` (a strain applied to both gives the stress).

Summation (torch-pme 0.5.0 does the reciprocal part; the real-space pairs come from vesin):
- ``direct``: non-periodic systems, all pairs i<j (O(N^2));
- ``ewald``: Ewald sum with Gaussian splitting of width ``smearing`` sigma (alpha = 1/(sqrt(2) sigma)):
  real-space pairs within ``r_cut``, reciprocal vectors up to ``k_cutoff`` (torch-pme sums the whole box
  |m_i| <= k_c |a_i| / 2 pi of reciprocal-lattice indices, which contains that sphere); O(N^2);
- ``pme``: particle-mesh Ewald (Darden et al. 1993: Lagrange interpolation of ``interpolation_order`` nodes
  per axis, 4 or 6) on a mesh of n_i = smallest 2^a 3^b 5^c >= |a_i| / ``grid_spacing`` points; O(N log N).
  With an even number of nodes the energy is continuous in the positions and the forces (its exact
  gradient) jump by about the mesh error where an atom crosses a mesh plane; with an odd number (measured
  here for torch-pme 0.5.0) the energy itself jumps at the midplanes, so odd orders are not offered;
- ``auto``: direct without pbc, Ewald up to ``ewald_max_atoms`` atoms, PME above.
(torch-pme's P3M is not offered: measured here on a triclinic rock-salt cell its error fell only slowly with
the mesh and grew with the assignment order, while it is fine for orthorhombic cells.)

Parameters from an accuracy (``choose_parameters``). ``accuracy`` is the target RMS error of the
electrostatic force on an atom relative to the force between two elementary charges 1 Å apart
(k_e * 1 e^2/Å^2 = 14.40 eV/Å: 1e-4 -> 1.4e-3 eV/Å) -- the convention of LAMMPS ``kspace_style``.
Error estimates (k_e factored out; Q = sum q^2 / sqrt(N V), alpha = 1/(sqrt(2) sigma)):
- real space (Kolafa & Perram, Mol. Simul. 9, 351 (1992)):
      dF_real = 2 Q / sqrt(r_cut) * exp(-r_cut^2 / (2 sigma^2))
- Ewald reciprocal space (Kolafa & Perram, as in LAMMPS ``ewald``):
      dF_k = 2 Q alpha sqrt(2 / k_cut) * exp(-sigma^2 k_cut^2 / 2)
- PME reciprocal space, an empirical bound (torch-pme's Lagrange-interpolation PME converges as
  h^(p-1); torch-pme's own PME estimate underestimated its error 4-7x here):
      dF_k = 2 C_p Q sigma^(-1/2) (h / sigma)^(p - 1),  C_4 = 0.6, C_6 = 0.55
  C_p is the worst case of water and rock salt in cubic and triclinic cells (sigma 1-1.5 Å, h/sigma
  0.15-1, h the largest mesh spacing perpendicular to the lattice planes), the 2 a safety factor.
Each part gets accuracy / sqrt(2); sigma follows from r_cut (default 8 Å), k_cut and h from sigma.
Q depends on the system; parameters are chosen once for a model, with a reference density
(``reference_q2_density`` = sum q^2 / V, ``reference_number_density`` = N / V; the defaults 0.05 e^2/Å^3
and 0.05 Å^-3 give Q = 0.22, above rock salt's 0.21 and water's 0.05-0.11) or from a given structure.
``estimate_errors`` evaluates the estimates for an actual structure.

Charges: fixed per element (``FixedCharges``) or predicted by a network and made to sum to the total
charge by ``enforce_total_charge``. A periodic cell with a net charge is refused unless
``neutralizing_background=True`` (then a uniform compensating background is implied, as in every Ewald
code; the energy of a charged cell then depends on the cell size).

``Electrostatics.metadata()`` gives the parameters as a plain dict, from which OpenMM's NonbondedForce
(PME: ``setPMEParameters(alpha, nx, ny, nz)`` with alpha in 1/nm = 10 * alpha, cutoff r_cut) or LAMMPS
(``pair_style coul/long r_cut``, ``kspace_style pppm accuracy``, ``kspace_modify gewald alpha mesh nx ny nz``)
can be configured; ``mesh_dimensions(params, cell)`` gives the grid for a cell, ``openmm_pme_parameters`` the
OpenMM settings.
"""

import math
import warnings
from typing import Any, Optional

import torch
import torchpme
from ase.data import chemical_symbols
from torch import nn
from vesin_torch import NeighborList

from mlmd import keys as K
from mlmd.units import CHARGE_UNIT, COULOMB_EV_A, ENERGY_UNIT, LENGTH_UNIT

METHODS = K.ELECTROSTATICS_METHODS
DEFAULT_ACCURACY = 1e-4
DEFAULT_R_CUT = 8.0
DEFAULT_ORDER = 6
DEFAULT_EWALD_MAX_ATOMS = 500  # measured: PME is as fast at 200-400 atoms, 2x faster at 1000
# PME mesh error: dF = PME_SAFETY * C_p * Q * sigma^-1/2 * (h / sigma)^(p - 1), C_p fitted (see module docstring)
PME_SAFETY = 2.0
_PME_COEFFS: dict[int, float] = {4: 0.6, 6: 0.55}  # even orders only: odd ones make E(x) jump


# ----------------------------------------------------------------------------------------------------------
# error estimates and parameter choice (plain Python: runs once, when a model is built)


def _q_factor(q2_density: float, number_density: float) -> float:
    """Q = sum q^2 / sqrt(N V) = (sum q^2 / V) / sqrt(N / V)."""
    return q2_density / math.sqrt(number_density)


def error_real(q_factor: float, smearing: float, r_cut: float) -> float:
    """Kolafa-Perram RMS force error of the truncated real-space sum (units of k_e e^2/Å^2)."""
    return 2.0 * q_factor / math.sqrt(r_cut) * math.exp(-(r_cut**2) / (2.0 * smearing**2))


def error_ewald_kspace(q_factor: float, smearing: float, k_cut: float) -> float:
    """Kolafa-Perram RMS force error of the reciprocal sum truncated at |k| = k_cut."""
    alpha = 1.0 / (math.sqrt(2.0) * smearing)
    return 2.0 * q_factor * alpha * math.sqrt(2.0 / k_cut) * math.exp(-(smearing**2) * k_cut**2 / 2.0)


def error_pme_kspace(q_factor: float, smearing: float, grid_spacing: float, order: int) -> float:
    """Bound on the RMS force error of PME (Lagrange interpolation of ``order`` nodes, mesh spacing h)."""
    if order not in _PME_COEFFS:
        raise ValueError(f"interpolation_order must be one of {sorted(_PME_COEFFS)}, got {order}")
    c = PME_SAFETY * _PME_COEFFS[order]
    return c * q_factor / math.sqrt(smearing) * (grid_spacing / smearing) ** (order - 1)


def _bisect(f: Any, lo: float, hi: float, increasing: bool, target: float, n: int = 200) -> float:
    """x in [lo, hi] where the monotone f crosses target (returns the side that meets the target)."""
    for _ in range(n):
        mid = 0.5 * (lo + hi)
        ok = f(mid) <= target
        if ok == increasing:  # increasing f: ok -> go up; decreasing f: not ok -> go up
            lo = mid
        else:
            hi = mid
    return lo if increasing else hi


def choose_parameters(
    accuracy: float = DEFAULT_ACCURACY,
    method: str = "auto",
    r_cut: Optional[float] = None,
    smearing: Optional[float] = None,
    k_cutoff: Optional[float] = None,
    grid_spacing: Optional[float] = None,
    interpolation_order: int = DEFAULT_ORDER,
    ewald_max_atoms: int = DEFAULT_EWALD_MAX_ATOMS,
    neutralizing_background: bool = False,
    reference_q2_density: float = 0.05,
    reference_number_density: float = 0.05,
    charges: Optional[torch.Tensor] = None,
    cell: Optional[torch.Tensor] = None,
) -> dict[str, Any]:
    """Ewald/PME parameters meeting ``accuracy`` (see the module docstring); any value given is kept.

    With ``charges`` and ``cell`` the estimate uses that structure's sum q^2, N and V instead of the
    reference densities. Returns the plain metadata dict (``Electrostatics.metadata`` format).
    """
    if method not in METHODS:
        raise ValueError(f"unknown electrostatics method {method!r}; known: {', '.join(METHODS)}")
    if not accuracy > 0:
        raise ValueError(f"accuracy must be positive, got {accuracy}")
    if interpolation_order not in _PME_COEFFS:
        raise ValueError(f"interpolation_order must be one of {sorted(_PME_COEFFS)}, got {interpolation_order}")
    if charges is not None and cell is not None:
        volume = abs(float(torch.linalg.det(cell.detach().double())))
        n = charges.numel()
        q2 = float((charges.detach().double() ** 2).sum())
        qf = _q_factor(max(q2, 1e-12) / volume, n / volume)
    else:
        qf = _q_factor(reference_q2_density, reference_number_density)
    part = accuracy / math.sqrt(2.0)
    if r_cut is None and smearing is None:
        r_cut = DEFAULT_R_CUT
    if smearing is None:
        assert r_cut is not None
        arg = 2.0 * qf / (part * math.sqrt(r_cut))
        smearing = r_cut / 2.0 if arg <= math.e else r_cut / math.sqrt(2.0 * math.log(arg))
    elif r_cut is None:
        sm = smearing
        r_cut = _bisect(lambda rc: error_real(qf, sm, rc), 0.1 * sm, 50.0 * sm, False, part)
    assert r_cut is not None
    if k_cutoff is None:
        sm = smearing
        k_cutoff = _bisect(lambda k: error_ewald_kspace(qf, sm, k), 1e-3 / sm, 50.0 / sm, False, part)
    if grid_spacing is None:
        sm = smearing
        grid_spacing = _bisect(
            lambda h: error_pme_kspace(qf, sm, h, interpolation_order), 1e-3 * sm, 2.0 * sm, True, part
        )
    return {
        "kind": "coulomb",
        "method": method,
        "accuracy": float(accuracy),
        "accuracy_definition": "RMS force error relative to k_e * 1 e^2 / (1 Å)^2 (LAMMPS kspace accuracy)",
        "coulomb_constant": COULOMB_EV_A,
        "units": {"length": LENGTH_UNIT, "energy": ENERGY_UNIT, "charge": CHARGE_UNIT},
        "smearing": float(smearing),
        "alpha": 1.0 / (math.sqrt(2.0) * float(smearing)),
        "r_cut": float(r_cut),
        "k_cutoff": float(k_cutoff),
        "lr_wavelength": math.pi / float(k_cutoff),
        "grid_spacing": float(grid_spacing),
        "mesh_rule": "n_i = smallest 2^a 3^b 5^c >= |a_i| / grid_spacing points along lattice vector a_i",
        "interpolation_order": int(interpolation_order),
        "ewald_max_atoms": int(ewald_max_atoms),
        "neutralizing_background": bool(neutralizing_background),
        "error_estimate_q_factor": qf,
    }


def _fft_size(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3 and 5."""
    n = max(int(n), 1)
    found = False
    while not found:
        m = n
        for p in [2, 3, 5]:
            while m % p == 0:
                m = m // p
        if m == 1:
            found = True
        else:
            n += 1
    return n


def mesh_dimensions(params: dict[str, Any], cell: torch.Tensor) -> list[int]:
    """PME mesh points along each lattice vector of this cell (the ``mesh_rule`` of the parameters)."""
    lengths = torch.linalg.norm(cell.detach().double(), dim=1)
    return [_fft_size(math.ceil(float(L) / params["grid_spacing"] - 1e-9)) for L in lengths]


def openmm_pme_parameters(params: dict[str, Any], cell: torch.Tensor) -> dict[str, Any]:
    """OpenMM NonbondedForce PME settings (nm units) equivalent to these parameters for this cell:
    ``nb.setNonbondedMethod(PME); nb.setCutoffDistance(cutoff_nm); nb.setPMEParameters(alpha_per_nm, nx, ny, nz);
    nb.setUseDispersionCorrection(False)``. OpenMM requires cutoff_nm <= half the box (choose r_cut accordingly).
    LAMMPS (metal units, Å): ``pair_style coul/long {r_cut}``, ``kspace_style pppm {accuracy}``,
    ``kspace_modify gewald {alpha} mesh {nx} {ny} {nz}``."""
    nx, ny, nz = mesh_dimensions(params, cell)
    return {"alpha_per_nm": 10.0 * params["alpha"], "nx": nx, "ny": ny, "nz": nz, "cutoff_nm": params["r_cut"] / 10.0}


def estimate_errors(params: dict[str, Any], charges: torch.Tensor, cell: torch.Tensor) -> dict[str, float]:
    """Estimated RMS force errors (eV/Å) of the parameters for one structure: real, ewald_kspace, pme_kspace."""
    c = cell.detach().double()
    volume = abs(float(torch.linalg.det(c)))
    qf = _q_factor(float((charges.detach().double() ** 2).sum()) / volume, charges.numel() / volume)
    ns = mesh_dimensions(params, cell)
    # mesh spacing perpendicular to the lattice planes
    heights = [volume / float(torch.linalg.norm(torch.linalg.cross(c[(i + 1) % 3], c[(i + 2) % 3]))) for i in range(3)]
    h = max(heights[i] / ns[i] for i in range(3))
    s = params["smearing"]
    return {
        "real": COULOMB_EV_A * error_real(qf, s, params["r_cut"]),
        "ewald_kspace": COULOMB_EV_A * error_ewald_kspace(qf, s, params["k_cutoff"]),
        "pme_kspace": COULOMB_EV_A * error_pme_kspace(qf, s, h, params["interpolation_order"]),
    }


class _PME(torchpme.PMECalculator):
    """torch-pme's PME with mlmd's mesh rule (FFT-friendly sizes instead of powers of two)."""

    def __init__(self, potential: torchpme.CoulombPotential, grid_spacing: float, interpolation_nodes: int) -> None:
        super().__init__(potential, mesh_spacing=2.0 * grid_spacing, interpolation_nodes=interpolation_nodes)
        self.grid_spacing: float = float(grid_spacing)

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
            sizes.append(_fft_size(int(math.ceil(float(lengths[k]) / self.grid_spacing - 1e-9))))
        ns = torch.tensor(sizes, dtype=torch.long, device=cell.device)
        self.mesh_interpolator.update(cell, ns)
        self.kspace_filter.update(cell, ns)
        self.mesh_interpolator.compute_weights(positions)
        rho_mesh = self.mesh_interpolator.points_to_mesh(particle_weights=charges)
        potential_mesh = self.kspace_filter.forward(rho_mesh)
        ivolume = torch.abs(cell.det()).pow(-1)
        phi = self.mesh_interpolator.mesh_to_points(potential_mesh) * ivolume
        # the Gaussian's self-potential, and the uniform background that neutralises a net charge
        phi = phi - charges * self.potential.self_contribution()
        phi = phi - 2 * self.potential.background_correction() * torch.sum(charges, dim=0) * ivolume
        return phi / 2


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
        self.r_cut: float = float(params["r_cut"])
        self.smearing: float = float(params["smearing"])
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
        )
        self.nl = NeighborList(cutoff=self.r_cut, full_list=False)
        self.register_buffer("_dtype_probe", torch.zeros((), dtype=torch.float64))

    @torch.jit.unused
    def metadata(self) -> dict[str, Any]:
        """Plain dict of the parameters, for a packaged model's metadata (JSON-serialisable).

        kind ("coulomb"), method, accuracy (+ accuracy_definition), coulomb_constant (eV Å), units,
        smearing sigma (Å), alpha = 1/(sqrt(2) sigma) (1/Å: LAMMPS g_ewald; OpenMM's alpha is 10x in 1/nm),
        r_cut (Å: OpenMM cutoff, LAMMPS coul/long cutoff), k_cutoff (1/Å, Ewald; lr_wavelength = pi / k_cutoff
        is torch-pme's EwaldCalculator parameter for it), grid_spacing (Å) and
        mesh_rule (PME mesh), interpolation_order (PME nodes per axis), ewald_max_atoms (auto switch),
        neutralizing_background, error_estimate_q_factor (the Q the parameters were chosen for).
        """
        return dict(self.params)

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
        ijs = self.nl.compute(positions.detach(), cell.detach(), True, "ijS", True)
        i = ijs[0].to(torch.long)
        j = ijs[1].to(torch.long)
        shifts = ijs[2].to(positions.dtype)
        d = torch.linalg.norm(positions[j] - positions[i] + shifts @ cell, dim=1)
        if d.numel() > 0 and float(d.detach().min()) < 1e-8:
            raise ValueError("two charges at the same position: the Coulomb energy is infinite")
        idx = torch.stack([i, j], dim=1)
        q = charges.unsqueeze(1)
        method = self.method
        if method == "auto":
            method = "ewald" if positions.shape[0] <= self.ewald_max_atoms else "pme"
        if method == "ewald":
            phi = self.ewald(q, cell, positions, idx, d)
        elif method == "pme":
            phi = self.pme(q, cell, positions, idx, d)
        else:
            raise ValueError("method 'direct' is for non-periodic systems; use ewald, pme or auto")
        return (q * phi).squeeze(1)

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
        """Estimated RMS force error (eV/Å) of this module for a periodic structure (Python only)."""
        est = estimate_errors(self.params, charges, cell)
        use_ewald = self.method == "ewald" or (self.method == "auto" and charges.numel() <= self.ewald_max_atoms)
        return math.hypot(est["real"], est["ewald_kspace"] if use_ewald else est["pme_kspace"])

    @torch.jit.unused
    def warn_if_inaccurate(self, charges: torch.Tensor, cell: torch.Tensor) -> None:
        """Warn when the estimated error for this structure exceeds the target (its charge density is higher
        than the one the parameters were chosen for)."""
        err = self.estimated_error(charges, cell)
        target = self.params["accuracy"] * COULOMB_EV_A
        if err > target:
            warnings.warn(
                f"estimated electrostatic force error {err:.2e} eV/Å exceeds the target {target:.2e} eV/Å for "
                "this structure: choose the parameters with choose_parameters(..., charges=, cell=)",
                stacklevel=2,
            )
