"""Ewald/PME parameter mathematics: error estimates, parameters from a target accuracy, mesh sizes and
memory, and their translation to OpenMM's and LAMMPS's settings.

Plain Python (math and numpy, no torch): engines import it without model code; the scalar functions are also
TorchScript-compatible (typed floats, no closures), so ``mlmd.model.electrostatics.Electrostatics`` compiles
them into its ``tune`` method and re-chooses its parameters for a structure inside a packaged model.

``accuracy`` is the target RMS error of the electrostatic force on an atom relative to the force between two
elementary charges 1 Å apart (k_e * 1 e^2/Å^2 = 14.40 eV/Å: 1e-4 -> 1.4e-3 eV/Å), the convention of LAMMPS
``kspace_style``. Error estimates (k_e factored out; Q = sum q^2 / sqrt(N V), alpha = 1/(sqrt(2) sigma)):
- real space (Kolafa & Perram, Mol. Simul. 9, 351 (1992)):
      dF_real = 2 Q / sqrt(r_cut) * exp(-r_cut^2 / (2 sigma^2))
- Ewald reciprocal space (Kolafa & Perram, as in LAMMPS ``ewald``):
      dF_k = 2 Q alpha sqrt(2 / k_cut) * exp(-sigma^2 k_cut^2 / 2)
- PME reciprocal space, an empirical bound (torch-pme's Lagrange-interpolation PME converges as
  h^(p-1); torch-pme's own PME estimate underestimated its error 4-7x here):
      dF_k = 2 C_p Q sigma^(-1/2) (h / sigma)^(p - 1),  C_4 = 0.6, C_6 = 0.55
  C_p is the worst case of water and rock salt in cubic and triclinic cells (sigma 1-1.5 Å, h/sigma
  0.15-1, h the largest mesh spacing perpendicular to the lattice planes), the 2 a safety factor.
  With ``pme_assignment="bspline"`` (smooth PME's B-splines with the |b(m)|^2 kernel correction,
  mlmd.model.pme_mesh) the same form holds with C_4 = 0.09, C_6 = 0.03: the worst case of k-space-only errors
  (PME against Ewald at the same splitting) of water (cubic), rattled rock salt (triclinic primitive cell) and
  rattled wurtzite ZnO, sigma 1.25 and 2 Å, h/sigma 0.33-1.1 (benchmarks/SPEEDUPS.md). At the same accuracy
  its mesh spacing is 1.8x (order 6) the Lagrange one, about 6x fewer mesh points. Such parameters also carry
  ``engine_grid_spacing`` for OpenMM's PME (order-5 B-splines): the same form with p - 1 = 4 and C = 0.01, the
  worst case of OpenMM's k-space error measured the same way (water, rattled cubic rock salt, rattled ZnO,
  h/sigma 0.25-0.7: 0.003, 0.005, 0.009).
Each part gets accuracy / sqrt(2); sigma follows from r_cut (default 8 Å), k_cut and h from sigma.
Q is the structure's own when its charges and cell are known (``choose_parameters(charges=, cell=)``,
``Electrostatics.tune``); otherwise a reference density (``reference_q2_density`` = sum q^2 / V,
``reference_number_density`` = N / V; defaults 0.05 e^2/Å^3 and 0.05 Å^-3, Q = 0.22: above rock salt's 0.21
and water's 0.05-0.11, but a ±2 crystal such as ZnO has Q = 0.7, so its forces then miss the target 2-3x).

Mesh bound: a PME mesh of n points costs about ``pme_bytes_per_point()`` * n bytes (float64, with autograd), an
Ewald sum over n_k reciprocal vectors and N atoms about ``ewald_bytes_per_term()`` * n_k * N. Above
``max_memory`` (default ``DEFAULT_MAX_MEMORY`` bytes) PME falls back to Ewald when that fits (same accuracy),
and otherwise stops with an error naming the mesh and the memory (``choose_reciprocal``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from mlmd import keys as K
from mlmd.units import ANGSTROM_TO_NM, CHARGE_UNIT, COULOMB_EV_A, ENERGY_UNIT, LENGTH_UNIT

METHODS = K.ELECTROSTATICS_METHODS
DEFAULT_ACCURACY = 1e-4
DEFAULT_R_CUT = 8.0
DEFAULT_ORDER = 6
DEFAULT_EWALD_MAX_ATOMS = 500  # measured: PME is as fast at 200-400 atoms, 2x faster at 1000
PME_ASSIGNMENTS = ("lagrange", "bspline")  # mesh weights: torch-pme's Lagrange scheme, smooth PME's B-splines
PME_ORDERS = (4, 6)  # even orders only: odd ones make E(x) jump (module docstring of electrostatics.py)
DEFAULT_MAX_MEMORY = 4.0e9  # bytes for the reciprocal-space part of one evaluation
# relative slack when comparing an estimate with its target (the parameters meet the target to rounding)
ROUNDING = 1e-9


# ----------------------------------------------------------------------------------------------------------
# error estimates (TorchScript-compatible)


def q_factor(sum_q2: float, n_atoms: int, volume: float) -> float:
    """Q = sum q^2 / sqrt(N V), the charge factor of the Kolafa-Perram estimates."""
    return sum_q2 / math.sqrt(float(n_atoms) * volume)


def pme_coefficient(order: int, assignment: str = "lagrange") -> float:
    """2 C_p of the PME estimate (the safety factor 2; even interpolation orders 4 and 6 only)."""
    if assignment == "bspline":
        if order == 4:
            return 2.0 * 0.09
        if order == 6:
            return 2.0 * 0.03
        raise ValueError("interpolation_order must be 4 or 6, got " + str(order))
    if assignment != "lagrange":
        raise ValueError("pme_assignment must be lagrange or bspline, got " + assignment)
    if order == 4:
        return 2.0 * 0.6
    if order == 6:
        return 2.0 * 0.55
    raise ValueError("interpolation_order must be 4 or 6, got " + str(order))


def error_real(q_factor: float, smearing: float, r_cut: float) -> float:
    """Kolafa-Perram RMS force error of the truncated real-space sum (units of k_e e^2/Å^2)."""
    return 2.0 * q_factor / math.sqrt(r_cut) * math.exp(-(r_cut**2) / (2.0 * smearing**2))


def error_ewald_kspace(q_factor: float, smearing: float, k_cut: float) -> float:
    """Kolafa-Perram RMS force error of the reciprocal sum truncated at |k| = k_cut."""
    alpha = 1.0 / (math.sqrt(2.0) * smearing)
    return 2.0 * q_factor * alpha * math.sqrt(2.0 / k_cut) * math.exp(-(smearing**2) * k_cut**2 / 2.0)


def error_pme_kspace(
    q_factor: float, smearing: float, grid_spacing: float, order: int, assignment: str = "lagrange"
) -> float:
    """Bound on the RMS force error of PME (``assignment`` weights of ``order`` nodes, mesh spacing h)."""
    ratio = grid_spacing / smearing
    return pme_coefficient(order, assignment) * q_factor / math.sqrt(smearing) * ratio ** (order - 1)


# ----------------------------------------------------------------------------------------------------------
# parameters from the error budget (TorchScript-compatible)


def smearing_for(q_factor: float, target: float, r_cut: float) -> float:
    """The largest sigma whose real-space error at r_cut is ``target`` (r_cut / 2 when any sigma up to it is)."""
    arg = 2.0 * q_factor / (target * math.sqrt(r_cut))
    if arg <= math.e:
        return r_cut / 2.0
    return r_cut / math.sqrt(2.0 * math.log(arg))


def r_cut_for(q_factor: float, target: float, smearing: float) -> float:
    """The smallest real-space cutoff whose error with this sigma is at most ``target`` (bisection)."""
    lo = 0.1 * smearing
    hi = 50.0 * smearing
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if error_real(q_factor, smearing, mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def k_cutoff_for(q_factor: float, target: float, smearing: float) -> float:
    """The smallest Ewald reciprocal cutoff whose error with this sigma is at most ``target`` (bisection)."""
    lo = 1e-3 / smearing
    hi = 50.0 / smearing
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if error_ewald_kspace(q_factor, smearing, mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def openmm_grid_spacing_for(q_factor: float, target: float, smearing: float) -> float:
    """The largest mesh spacing (at most 2 sigma) at which OpenMM's order-5 smooth PME meets ``target``: the
    bound 2 C Q sigma^(-1/2) (h / sigma)^4 with C = 0.01 (module docstring)."""
    h = smearing * (target * math.sqrt(smearing) / (2.0 * 0.01 * q_factor)) ** 0.25
    return min(h, 2.0 * smearing)


def grid_spacing_for(
    q_factor: float, target: float, smearing: float, order: int, assignment: str = "lagrange"
) -> float:
    """The largest PME mesh spacing (at most 2 sigma) whose error with this sigma is at most ``target``."""
    c = pme_coefficient(order, assignment)
    h = smearing * (target * math.sqrt(smearing) / (c * q_factor)) ** (1.0 / (order - 1))
    h = min(h, 2.0 * smearing)
    # the closed form can land a rounding step above the target: step down until it is met
    while error_pme_kspace(q_factor, smearing, h, order, assignment) > target:
        h = h * (1.0 - 1e-12)
    return h


# ----------------------------------------------------------------------------------------------------------
# structures (numpy)


def _array(x: Any) -> np.ndarray:
    """float64 numpy array of an array-like (a torch tensor is detached first)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def structure_sums(charges: Any, cell: Any) -> tuple[float, int, float]:
    """(sum q^2, N, V) of a structure; charges [N] in e, cell [3, 3] in Å (rows = lattice vectors)."""
    q = _array(charges).reshape(-1)
    volume = abs(float(np.linalg.det(_array(cell))))
    if not volume > 0:
        raise ValueError("the cell has zero volume")
    return float(np.sum(q**2)), int(q.size), volume


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
    charges: Any = None,
    cell: Any = None,
    max_memory: float = DEFAULT_MAX_MEMORY,
    pme_assignment: str = "lagrange",
) -> dict[str, Any]:
    """Ewald/PME parameters meeting ``accuracy`` (see the module docstring); any value given is kept.

    ``pme_assignment``: the mesh weights of the model's own PME ("lagrange", torch-pme's scheme, or "bspline",
    smooth PME: a coarser mesh for the same accuracy). With "bspline" the metadata also carries
    ``engine_grid_spacing``, the spacing OpenMM's own (order-5) PME needs for the accuracy
    (``openmm_grid_spacing_for``).

    With ``charges`` and ``cell`` (array-likes) the estimate uses that structure's sum q^2, N and V instead
    of the reference densities. Returns the plain metadata dict (``Electrostatics.metadata`` format).
    """
    if method not in METHODS:
        raise ValueError(f"unknown electrostatics method {method!r}; known: {', '.join(METHODS)}")
    if not accuracy > 0:
        raise ValueError(f"accuracy must be positive, got {accuracy}")
    if interpolation_order not in PME_ORDERS:
        raise ValueError(f"interpolation_order must be one of {list(PME_ORDERS)}, got {interpolation_order}")
    if not max_memory > 0:
        raise ValueError(f"max_memory must be positive, got {max_memory}")
    if charges is not None and cell is not None:
        q2, n, volume = structure_sums(charges, cell)
        qf = q_factor(max(q2, 1e-12), n, volume)
    else:
        qf = reference_q2_density / math.sqrt(reference_number_density)
    part = accuracy / math.sqrt(2.0)
    if r_cut is None and smearing is None:
        r_cut = DEFAULT_R_CUT
    if smearing is None:
        assert r_cut is not None
        smearing = smearing_for(qf, part, r_cut)
    elif r_cut is None:
        r_cut = r_cut_for(qf, part, smearing)
    assert r_cut is not None
    if k_cutoff is None:
        k_cutoff = k_cutoff_for(qf, part, smearing)
    if pme_assignment not in PME_ASSIGNMENTS:
        raise ValueError(f"pme_assignment must be one of {list(PME_ASSIGNMENTS)}, got {pme_assignment!r}")
    extra: dict[str, Any] = {}
    if pme_assignment != "lagrange":
        extra = {"pme_assignment": pme_assignment,
                 "engine_grid_spacing": openmm_grid_spacing_for(qf, part, smearing)}
    if grid_spacing is None:
        grid_spacing = grid_spacing_for(qf, part, smearing, interpolation_order, pme_assignment)
    return extra | {
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
        "max_memory": float(max_memory),
    }


def fft_size(n: int) -> int:
    """Smallest integer >= n (and >= 1) whose only prime factors are 2, 3 and 5. TorchScript-compatible."""
    n = max(n, 1)
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


def mesh_size(length: float, grid_spacing: float) -> int:
    """PME mesh points along a lattice vector of this length (the ``mesh_rule``). TorchScript-compatible."""
    return fft_size(int(math.ceil(length / grid_spacing - 1e-9)))


def ewald_kvector_counts(length: float, k_cutoff: float) -> int:
    """Reciprocal-lattice indices torch-pme's Ewald sums along a lattice vector: ceil(k_cut |a| / 2 pi)."""
    return max(int(math.ceil(k_cutoff * length / (2.0 * math.pi))), 1)


def mesh_dimensions(params: dict[str, Any], cell: Any) -> list[int]:
    """PME mesh points along each lattice vector of this cell (the ``mesh_rule`` of the parameters)."""
    lengths = np.linalg.norm(_array(cell), axis=1)
    return [mesh_size(float(length), float(params["grid_spacing"])) for length in lengths]


def perpendicular_heights(cell: Any) -> list[float]:
    """Distances between the lattice planes spanned by the other two vectors, one per lattice vector (Å)."""
    c = _array(cell)
    volume = abs(float(np.linalg.det(c)))
    return [volume / float(np.linalg.norm(np.cross(c[(i + 1) % 3], c[(i + 2) % 3]))) for i in range(3)]


def estimate_errors(params: dict[str, Any], charges: Any, cell: Any) -> dict[str, float]:
    """Estimated RMS force errors (eV/Å) of the parameters for one structure: real, ewald_kspace, pme_kspace."""
    q2, n, volume = structure_sums(charges, cell)
    qf = q_factor(q2, n, volume)
    ns = mesh_dimensions(params, cell)
    h = max(height / m for height, m in zip(perpendicular_heights(cell), ns))
    s = float(params["smearing"])
    return {
        "real": COULOMB_EV_A * error_real(qf, s, float(params["r_cut"])),
        "ewald_kspace": COULOMB_EV_A * error_ewald_kspace(qf, s, float(params["k_cutoff"])),
        "pme_kspace": COULOMB_EV_A * error_pme_kspace(qf, s, h, int(params["interpolation_order"]),
                                                      str(params.get("pme_assignment", "lagrange"))),
    }


def exceeds(estimate: float, target: float, rounding: float = ROUNDING) -> bool:
    """True when an estimate is above its target by more than rounding (relative ``ROUNDING``).
    TorchScript-compatible (the default is bound at definition)."""
    return estimate > target * (1.0 + rounding)


# ----------------------------------------------------------------------------------------------------------
# memory


def pme_bytes_per_point() -> float:
    """Bytes of one PME evaluation per mesh point (float64, energy and forces): peak RSS measured with torch-pme
    0.5.0 on meshes of 64^3 and 128^3 points gave 126 and 87."""
    return 130.0


def ewald_bytes_per_term() -> float:
    """Bytes of one Ewald evaluation per (reciprocal vector, atom) pair, measured as pme_bytes_per_point: 615 with
    8 atoms and 2e4 vectors, 458 with 64 atoms and 1.6e5 vectors."""
    return 620.0


def _gb(n_bytes: float) -> str:
    """Bytes in MB or GB with two decimals (TorchScript-compatible: str() of a float there prints every digit)."""
    unit, scale = " GB", 1e9
    if n_bytes < 1e9:
        unit, scale = " MB", 1e6
    hundredths = int(math.floor(n_bytes / scale * 100.0 + 0.5))
    return str(hundredths // 100) + "." + str(hundredths // 10 % 10) + str(hundredths % 10) + unit


def choose_reciprocal(
    method: str,
    n_atoms: int,
    ewald_max_atoms: int,
    lengths: list[float],
    k_cutoff: float,
    grid_spacing: float,
    max_memory: float,
) -> str:
    """"ewald" or "pme" for a periodic structure with lattice vectors of these lengths (TorchScript-compatible).

    ``auto`` takes Ewald up to ``ewald_max_atoms`` atoms, PME above. PME whose mesh would need more than
    ``max_memory`` bytes falls back to Ewald (same accuracy: k_cutoff meets it) when Ewald fits; when neither
    fits a ValueError names the mesh, the Ewald sum and their memory.
    """
    if method == "direct":
        raise ValueError("method 'direct' is for non-periodic systems; use ewald, pme or auto")
    if method == "auto":
        method = "ewald" if n_atoms <= ewald_max_atoms else "pme"
    mesh: list[int] = []
    counts: list[int] = []
    for length in lengths:
        mesh.append(mesh_size(length, grid_spacing))
        counts.append(ewald_kvector_counts(length, k_cutoff))
    pme_bytes = pme_bytes_per_point() * float(mesh[0]) * float(mesh[1]) * float(mesh[2])
    ewald_bytes = ewald_bytes_per_term() * float(counts[0]) * float(counts[1]) * float(counts[2]) * float(n_atoms)
    if method == "pme" and pme_bytes <= max_memory:
        return "pme"
    if ewald_bytes <= max_memory:
        return "ewald"
    raise ValueError(
        "electrostatics needs a PME mesh of " + str(mesh[0]) + "x" + str(mesh[1]) + "x" + str(mesh[2])
        + " points (grid spacing " + str(round(grid_spacing * 1e4) / 1e4) + " Å, about " + _gb(pme_bytes)
        + ") or an Ewald sum over "
        + str(counts[0]) + "x" + str(counts[1]) + "x" + str(counts[2]) + " reciprocal vectors and "
        + str(n_atoms) + " atoms (about " + _gb(ewald_bytes) + "), above the memory limit of "
        + _gb(max_memory) + " (max_memory): ask for a lower accuracy or raise max_memory"
    )


def reciprocal_method(params: dict[str, Any], cell: Any, n_atoms: int) -> str:
    """The reciprocal-space method ("ewald" or "pme") the parameters give this structure (``choose_reciprocal``)."""
    lengths = [float(x) for x in np.linalg.norm(_array(cell), axis=1)]
    return choose_reciprocal(
        str(params["method"]), int(n_atoms), int(params["ewald_max_atoms"]), lengths, float(params["k_cutoff"]),
        float(params["grid_spacing"]), float(params.get("max_memory", DEFAULT_MAX_MEMORY)),
    )


# ----------------------------------------------------------------------------------------------------------
# engines


def openmm_pme_parameters(params: dict[str, Any], cell: Any) -> dict[str, Any]:
    """OpenMM NonbondedForce PME settings (nm units) equivalent to these parameters for this cell (Å):
    ``nb.setNonbondedMethod(PME); nb.setCutoffDistance(cutoff_nm); nb.setPMEParameters(alpha_per_nm, nx, ny, nz);
    nb.setUseDispersionCorrection(False)``. OpenMM requires cutoff_nm <= half the box (choose r_cut accordingly).
    The mesh follows ``engine_grid_spacing`` where the parameters have one (B-spline models: chosen for OpenMM's
    order-5 smooth PME), else ``grid_spacing`` (the Lagrange rule's, finer than OpenMM needs).
    """
    engine = {**params, "grid_spacing": params.get("engine_grid_spacing", params["grid_spacing"])}
    nx, ny, nz = mesh_dimensions(engine, cell)
    return {
        "alpha_per_nm": float(params["alpha"]) / ANGSTROM_TO_NM,
        "nx": nx,
        "ny": ny,
        "nz": nz,
        "cutoff_nm": float(params["r_cut"]) * ANGSTROM_TO_NM,
    }


def lammps_kspace_parameters(params: dict[str, Any], cell: Any, n_atoms: int) -> dict[str, Any]:
    """LAMMPS (``units metal``, Å) settings equivalent to these parameters for this cell:
    ``pair_style coul/long {pair_cutoff}``, ``kspace_style {kspace_style} {accuracy}``,
    ``kspace_modify gewald {gewald}``. The style follows ``reciprocal_method`` (``ewald`` or ``pppm``); LAMMPS
    then chooses its k-vectors or PPPM mesh for the accuracy from the actual charges (its own estimates)."""
    style = {"ewald": "ewald", "pme": "pppm"}[reciprocal_method(params, cell, n_atoms)]
    return {
        "pair_cutoff": float(params["r_cut"]),
        "kspace_style": style,
        "accuracy": float(params["accuracy"]),
        "gewald": float(params["alpha"]),
    }


# ----------------------------------------------------------------------------------------------------------
# the once-per-run hook


# what the warning of each engine names as the fix
FIX_ASE = "MLMDCalculator(model, tune_electrostatics=True) re-chooses them for the structure"


def _sci(x: float) -> str:
    """x with three significant digits, as d.dde-N (TorchScript-compatible: no format specifiers there)."""
    if not x > 0.0 or math.isinf(x):
        return str(x)
    exponent = int(math.floor(math.log10(x)))
    digits = int(math.floor(x / 10.0**exponent * 100.0 + 0.5))  # 100..1000
    if digits >= 1000:
        digits, exponent = digits // 10, exponent + 1
    return str(digits // 100) + "." + str(digits // 10 % 10) + str(digits % 10) + "e" + str(exponent)


def inaccuracy_message(estimate: float, target: float, accuracy: float, fix: str) -> str:
    """The accuracy warning every engine gives (TorchScript-compatible): the estimate, the target and the fix."""
    return (
        "estimated electrostatic force error " + _sci(estimate) + " eV/Å exceeds the target " + _sci(target)
        + " eV/Å (accuracy " + str(accuracy) + " x k_e) for this structure's charges and cell: its charge density "
        + "is above the one the Ewald/PME parameters were chosen for. Fix: " + fix
    )


def structure_force_error(
    sum_q2: float, n_atoms: int, volume: float, lengths: list[float], heights: list[float], smearing: float,
    r_cut: float, k_cutoff: float, grid_spacing: float, order: int, method: str, ewald_max_atoms: int,
    max_memory: float, assignment: str = "lagrange",
) -> float:
    """Estimated RMS force error (units of k_e e^2/Å^2) for a structure given by its sums (sum q^2, N, V), the
    lengths of its lattice vectors and the heights between its lattice planes: the real-space and the
    reciprocal-space estimate of the method the structure gets (``choose_reciprocal``) added in quadrature.
    TorchScript-compatible (the OpenMM bridge checks with it inside its first evaluation)."""
    qf = q_factor(sum_q2, n_atoms, volume)
    real = error_real(qf, smearing, r_cut)
    method = choose_reciprocal(method, n_atoms, ewald_max_atoms, lengths, k_cutoff, grid_spacing, max_memory)
    if method == "ewald":
        kspace = error_ewald_kspace(qf, smearing, k_cutoff)
    else:
        h = 0.0
        for i in range(3):
            h = max(h, heights[i] / float(mesh_size(lengths[i], grid_spacing)))
        kspace = error_pme_kspace(qf, smearing, h, order, assignment)
    return math.sqrt(real * real + kspace * kspace)


def check_accuracy(params: dict[str, Any], charges: Any, cell: Any, fix: str = FIX_ASE) -> float:
    """The accuracy check an engine runs once per run: the estimated RMS force error (eV/Å) of these parameters
    (a model card's electrostatics entry) for this structure, with a warning naming the estimate, the target and
    ``fix`` when it exceeds the target by more than rounding. Charges [N] (e), cell [3, 3] (Å), array-likes."""
    import warnings

    est = estimate_errors(params, charges, cell)
    n_atoms = _array(charges).size
    kspace = est["ewald_kspace"] if reciprocal_method(params, cell, n_atoms) == "ewald" else est["pme_kspace"]
    err = math.hypot(est["real"], kspace)
    target = float(params["accuracy"]) * COULOMB_EV_A
    if exceeds(err, target):
        warnings.warn(inaccuracy_message(err, target, float(params["accuracy"]), fix), stacklevel=2)
    return err


def tune_for_structure(model: Any, charges: Any, cell: Any, params: Optional[dict[str, Any]] = None) -> int:
    """Tune every Electrostatics term inside ``model`` (a Python module or a loaded TorchScript model) to this
    structure's charges [N] (e) and cell [3, 3] (Å, rows = lattice vectors), as float64 torch tensors; returns
    how many terms were tuned. Engines call it once at the start of a run; the parameters then stay fixed.

    A non-periodic structure (cell None or of zero volume) needs nothing (the direct sum is exact). A term from
    a model file that predates ``tune`` is left as it is; with the model's electrostatics ``params`` (its card)
    ``check_accuracy`` then warns when the estimated error exceeds the target.
    """
    if cell is None or not abs(float(np.linalg.det(_array(cell)))) > 0.0:
        return 0
    tuned = 0
    untunable = 0
    for module in model.modules():
        if getattr(module, "original_name", type(module).__name__) != "Electrostatics":
            continue
        if hasattr(module, "tune"):
            module.tune(charges, cell)
            tuned += 1
        else:
            untunable += 1
    if untunable and params:
        check_accuracy(params, charges, cell)
    return tuned
