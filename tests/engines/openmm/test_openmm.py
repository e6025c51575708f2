"""OpenMM through openmm-torch: same energies and forces as the ASE calculator, NVE conservation, ML/MM, errors.

References are independent of the OpenMM adapter: the ASE calculator (the packaged model called from Python),
a plain numpy Ewald sum for the engine-native PME, OpenMM's own MM force field for the ML/MM split.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from openmm import app, unit

from conftest import make_potential, water_box
from mlmd.deploy.export import package
from mlmd.deploy.load import ModelFileError
from mlmd.engines.ase import MLMDCalculator
from mlmd.engines.openmm import MLMDPotential, OpenMMSetupError, topology_from_atoms
from mlmd.units import COULOMB_EV_A, EV_TO_KJ_PER_MOL

pytestmark = pytest.mark.openmm

KJ = unit.kilojoule_per_mole
TOL = {"float64": 1e-9, "float32": 1e-5}
CHARGES = {"H": 0.41, "O": -0.82}


# ------------------------------------------------------------------------------------------------ helpers


def omm_energy_forces(system: openmm.System, positions, platform: str = "CPU", box=None) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) from an OpenMM Context."""
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName(platform))
    if box is not None:
        ctx.setPeriodicBoxVectors(*box)
    ctx.setPositions(positions)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(KJ) / EV_TO_KJ_PER_MOL
    f = st.getForces(asNumpy=True).value_in_unit(KJ / unit.angstrom) / EV_TO_KJ_PER_MOL
    return e, np.asarray(f)


@functools.lru_cache(maxsize=8)
def _calculator(model: str) -> MLMDCalculator:
    return MLMDCalculator(model)


def ase_energy_forces(atoms: Atoms, model) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = _calculator(str(model))
    return atoms.get_potential_energy(), atoms.get_forces()


def assert_close(e, f, e_ref, f_ref, tol):
    assert abs(e - e_ref) <= tol * abs(e_ref), (e, e_ref, abs(e - e_ref) / abs(e_ref))
    err = np.abs(f - f_ref).max() / np.abs(f_ref).max()
    assert err <= tol, err


def periodic_water(kind: str, seed: int = 0) -> Atoms:
    """27 waters (81 atoms) in a 9.3 Å cell, cubic or triclinic (OpenMM's reduced form), some atoms outside it."""
    atoms = water_box(3, seed)
    rng = np.random.default_rng(seed + 10)
    if kind == "triclinic":
        length = atoms.cell.array[0, 0]
        cell = np.array([[length, 0, 0], [0.31 * length, length, 0], [-0.27 * length, 0.22 * length, length]])
        frac = atoms.get_scaled_positions(wrap=False)
        atoms = Atoms(atoms.numbers, scaled_positions=frac, cell=cell, pbc=True)
    atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
    # OpenMM never wraps positions: put a few atoms one or two lattice vectors away
    shift = 2 * atoms.cell.array[0] - atoms.cell.array[1] + atoms.cell.array[2]
    atoms.positions[[0, 4, 17, 50]] += shift
    return atoms


def water_cluster(seed: int = 0) -> Atoms:
    box = water_box(2, seed, spacing=3.4)
    return Atoms(box.numbers, positions=box.positions)


def ewald_reference(pos: np.ndarray, cell: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """Point-charge Ewald sum (eV, eV/Å), converged far below 1e-10 (alpha 0.3/Å, 7^3 images, |m| <= 9)."""
    alpha = 0.3
    n = len(q)
    images = np.array([(i, j, k) for i in range(-3, 4) for j in range(-3, 4) for k in range(-3, 4)], float) @ cell
    d = pos[None, :, None, :] - pos[:, None, None, :] + images[None, None, :, :]  # [i, j, image, 3], r_j - r_i
    r = np.linalg.norm(d, axis=-1)
    self_pair = (np.arange(n)[:, None, None] == np.arange(n)[None, :, None]) & (np.abs(images).sum(-1) == 0)[None, None]
    r = np.where(self_pair, np.inf, r)
    qq = (q[:, None] * q[None, :])[:, :, None]
    e_real = 0.5 * (qq * _erfc(alpha * r) / r).sum()
    de_dr = qq * (-_erfc(alpha * r) / r**2 - 2 * alpha / math.sqrt(math.pi) * np.exp(-((alpha * r) ** 2)) / r)
    f_real = (de_dr[..., None] * d / r[..., None]).sum(axis=(1, 2))
    recip = 2 * math.pi * np.linalg.inv(cell).T
    m = np.array([(i, j, k) for i in range(-9, 10) for j in range(-9, 10) for k in range(-9, 10)])
    m = m[np.abs(m).sum(1) > 0]
    kvec = m @ recip
    k2 = (kvec**2).sum(1)
    volume = abs(np.linalg.det(cell))
    a_k = np.exp(-k2 / (4 * alpha**2)) / k2
    phase = pos @ kvec.T  # [n, K]
    s = (q[:, None] * np.exp(1j * phase)).sum(0)
    e_recip = 2 * math.pi / volume * (a_k * np.abs(s) ** 2).sum()
    # dE/dr_i = (2 pi / V) sum_k a_k 2 Re(conj(S) i k q_i e^{i k.r_i})
    f_recip = 4 * math.pi / volume * q[:, None] * ((a_k * np.imag(np.exp(1j * phase) * np.conj(s)[None, :]))[:, :, None]
                                                   * kvec[None]).sum(1)
    e_self = -alpha / math.sqrt(math.pi) * (q**2).sum()
    return COULOMB_EV_A * (e_real + e_recip + e_self), COULOMB_EV_A * (f_real + f_recip)


def _erfc(x: np.ndarray) -> np.ndarray:
    from scipy.special import erfc

    return erfc(x)


def coulomb_reference(pos: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    d = pos[None, :, :] - pos[:, None, :]
    r = np.linalg.norm(d, axis=-1)
    np.fill_diagonal(r, np.inf)
    qq = q[:, None] * q[None, :]
    e = 0.5 * (qq / r).sum()
    f = ((-qq / r**2)[..., None] * d / r[..., None]).sum(1)
    return COULOMB_EV_A * e, COULOMB_EV_A * f


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These systems are tiny; a second OpenMP thread only costs here (and with libgomp's active waiting on a
    shared, oversubscribed machine it made each evaluation ~30x slower). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _coulomb_model(tmp_path_factory, name: str, **electrostatics) -> Path:
    """The float64 test model (model_files' weights) with fixed-charge electrostatics inside the file."""
    from mlmd.model.longrange import CoulombTerm

    path = tmp_path_factory.mktemp("lr") / name
    term = CoulombTerm({1: CHARGES["H"], 8: CHARGES["O"]}, **electrostatics)
    package(make_potential(dtype=torch.float64), path, long_range=[term])
    return path


@pytest.fixture(scope="module")
def engine_pme_model(tmp_path_factory):
    """Short-range model + fixed-charge PME (mlmd's parameters for a 1e-6 accuracy, 4 Å real space): served
    with electrostatics='engine', OpenMM's PME replaces the file's own."""
    return _coulomb_model(tmp_path_factory, "ho_pme.pt", accuracy=1e-6, method="pme", r_cut=4.0)


@pytest.fixture(scope="module")
def hybrid_model(tmp_path_factory):
    """Short-range + fixed-charge electrostatics (Ewald/PME by accuracy 1e-6, 4 Å real space) + D3(BJ),
    all inside the TorchScript file, as mlmd packages a long-range model."""
    from mlmd.model.longrange import CoulombTerm, DispersionTerm

    path = tmp_path_factory.mktemp("lr") / "ho_hybrid.pt"
    terms = [CoulombTerm({1: CHARGES["H"], 8: CHARGES["O"]}, accuracy=1e-6, r_cut=4.0),
             DispersionTerm(atomic_numbers=[1, 8], functional="gfn2", cutoff=12.0, cutoff_cn=12.0)]
    package(make_potential(dtype=torch.float64, seed=4), path, long_range=terms)
    return path


@pytest.fixture(scope="module")
def atm_model(tmp_path_factory):
    """Short-range + D3(BJ) with the three-body (ATM) term, whose derivatives are by hand (no detach())."""
    from mlmd.model.longrange import DispersionTerm

    path = tmp_path_factory.mktemp("atm") / "ho_atm.pt"
    term = DispersionTerm(atomic_numbers=[1, 8], functional="pbe", three_body=True, cutoff=10.0, cutoff_cn=10.0,
                          cutoff_three_body=8.0)
    package(make_potential(dtype=torch.float64, seed=4), path, long_range=[term])
    return path


@pytest.fixture(scope="module")
def nve_model(tmp_path_factory):
    """float64, one interaction layer (3x cheaper per step than the shared two-layer model)."""
    path = tmp_path_factory.mktemp("nve") / "ho_1layer.pt"
    package(make_potential(dtype=torch.float64, n_layers=1, seed=2), path)
    return path


@pytest.fixture(scope="module")
def periodic_only_model(tmp_path_factory):
    """A model that sums its electrostatics itself by Ewald (chosen explicitly): it needs a lattice."""
    return _coulomb_model(tmp_path_factory, "ho_in_model_ewald.pt", accuracy=1e-4, method="ewald", r_cut=4.0)


@pytest.fixture(scope="module")
def direct_sum_model(tmp_path_factory):
    """A model whose electrostatics is the direct sum: molecules only."""
    return _coulomb_model(tmp_path_factory, "ho_in_model_direct.pt", accuracy=1e-4, method="direct", r_cut=4.0)


@pytest.fixture(scope="module")
def monomer_model(tmp_path_factory):
    """A float64 model that binds a water molecule (readout fitted by least squares to a harmonic O–H/H–O–H
    energy and its forces, O–H 0.75–1.45 Å, 75–135°): a random-weight model lets an ML water fly apart among
    MM waters (its H, with no LJ, then falls onto an MM oxygen)."""
    pot = make_potential(dtype=torch.float64, channels=32, seed=1)
    rng = np.random.default_rng(0)
    k = 64
    r1, r2 = rng.uniform(0.75, 1.45, k), rng.uniform(0.75, 1.45, k)
    theta = np.deg2rad(rng.uniform(75, 135, k))
    xyz = np.zeros((k, 3, 3))
    xyz[:, 1, 0] = r1
    xyz[:, 2, 0], xyz[:, 2, 1] = r2 * np.cos(theta), r2 * np.sin(theta)
    x = torch.tensor(xyz, requires_grad=True)
    d1, d2 = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]
    b1, b2 = torch.linalg.norm(d1, dim=1), torch.linalg.norm(d2, dim=1)
    angle = torch.acos((d1 * d2).sum(1) / (b1 * b2))
    target = 15.0 * ((b1 - 0.9572) ** 2 + (b2 - 0.9572) ** 2) + 1.5 * (angle - math.radians(104.52)) ** 2
    target_f = -torch.autograd.grad(target.sum(), x)[0].reshape(-1, 3)

    pos = x.detach().reshape(-1, 3).requires_grad_(True)
    species = torch.tensor([1, 0, 0] * k)  # species indices for atomic numbers (1, 8)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    edges = torch.tensor([[3 * m + a for m in range(k) for a, _ in pairs],
                          [3 * m + b for m in range(k) for _, b in pairs]])
    last = pot.network.readout.net[-1]
    features = {}
    hook = last.register_forward_hook(lambda mod, inp, out: features.__setitem__("phi", inp[0]))
    pot(species, edges, pos[edges[1]] - pos[edges[0]])
    hook.remove()
    c = last.weight.shape[1]
    phi = features["phi"].reshape(k, 3, c).sum(1) * pot.scale  # molecule energy = phi @ w + const
    eye = torch.eye(c, dtype=phi.dtype).unsqueeze(1).expand(c, k, c)
    jac = torch.autograd.grad(phi, pos, grad_outputs=eye, is_grads_batched=True)[0]  # [c, 3k, 3]
    a = torch.cat([phi - phi.mean(0), -jac.permute(1, 2, 0).reshape(-1, c)]).detach().numpy()
    b = np.concatenate([(target - target.mean()).detach().numpy(), target_f.reshape(-1).numpy()])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    assert np.sqrt(np.mean((a[:k] @ w - b[:k]) ** 2)) < 0.02 * np.ptp(b[:k])
    with torch.no_grad():
        last.weight.copy_(torch.as_tensor(w).reshape(1, c))
    path = tmp_path_factory.mktemp("mlmm") / "water_monomer.pt"
    package(pot.eval(), path)
    return path


# ----------------------------------------------------------------------------------- same as the ASE engine


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["cubic", "triclinic", "cluster"])
def test_energy_forces_match_ase(model_files, dtype, kind):
    atoms = water_cluster() if kind == "cluster" else periodic_water(kind)
    top, pos = topology_from_atoms(atoms)
    system = MLMDPotential(model_files[dtype]).createSystem(top)
    assert system.usesPeriodicBoundaryConditions() == (kind != "cluster")
    e, f = omm_energy_forces(system, pos)
    e_ref, f_ref = ase_energy_forces(atoms, model_files[dtype])
    assert_close(e, f, e_ref, f_ref, TOL[dtype])


def test_openmmml_entry_point_and_reference_platform(model_files):
    """MLPotential("mlmd", modelPath=...) works through the entry point; Reference platform agrees too."""
    from openmmml import MLPotential

    atoms = periodic_water("triclinic", seed=3)
    top, pos = topology_from_atoms(atoms)
    system = MLPotential("mlmd", modelPath=str(model_files["float64"])).createSystem(top)
    e_ref, f_ref = ase_energy_forces(atoms, model_files["float64"])
    for platform in ("Reference", "CPU"):
        e, f = omm_energy_forces(system, pos, platform)
        assert_close(e, f, e_ref, f_ref, 1e-9)


def test_add_forces_to_a_subset(model_files):
    """The model on atoms 3..8 of a System: the others feel nothing, the subset gets the ASE forces."""
    atoms = water_cluster(seed=2)
    top, pos = topology_from_atoms(atoms)
    system = openmm.System()
    for a in top.atoms():
        system.addParticle(a.element.mass)
    subset = [3, 4, 5, 6, 7, 8]
    MLMDPotential(model_files["float64"]).addForces(top, system, atoms=subset)
    e, f = omm_energy_forces(system, pos)
    e_ref, f_ref = ase_energy_forces(atoms[subset], model_files["float64"])
    assert_close(e, f[subset], e_ref, f_ref, 1e-9)
    others = np.setdiff1d(np.arange(len(atoms)), subset)
    assert np.all(f[others] == 0.0)


_OPENMM_FIRST = """
import openmm                       # as ordinary OpenMM scripts start: before torch is loaded
from openmmml import MLPotential    # loads mlmd.engines.openmm through the entry point
import sys
sys.path.insert(0, {tests!r})
from conftest import water_box
from mlmd.engines.openmm import topology_from_atoms
top, pos = topology_from_atoms(water_box(3, 0))
system = MLPotential("mlmd", modelPath={model!r}).createSystem(top)
ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
ctx.setPositions(pos)
print("ENERGY", ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
"""


def test_script_that_imports_openmm_before_torch(model_files):
    """openmm loads its plugins at import; openmm-torch's CPU kernels need torch's libraries, so they fail to
    load when openmm comes first. The adapter loads them again: the ordinary script order works."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = _OPENMM_FIRST.format(tests=str(Path(__file__).resolve().parents[2]), model=str(model_files["float64"]))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    energy = float(run.stdout.split("ENERGY")[1])
    e_ref, _ = ase_energy_forces(water_box(3, 0), model_files["float64"])
    assert abs(energy / EV_TO_KJ_PER_MOL - e_ref) <= 1e-9 * abs(e_ref)


# ------------------------------------------------------------------------------------ engine-native PME


@pytest.mark.parametrize("kind", ["cubic", "triclinic", "cluster"])
def test_engine_pme_matches_ewald_reference(model_files, engine_pme_model, kind):
    """electrostatics='engine': OpenMM's PME on the metadata's charges + the short-range model equals the ASE
    short-range energy + an independent Ewald sum, to the accuracy the metadata requests (1e-6)."""
    atoms = water_cluster() if kind == "cluster" else periodic_water(kind, seed=1)
    top, pos = topology_from_atoms(atoms)
    potential = MLMDPotential(engine_pme_model, electrostatics="engine")
    system = potential.createSystem(top)
    names = [f.getName() for f in system.getForces()]
    assert "mlmd electrostatics" in names
    # the CPU platform sums a plain (non-periodic) Coulomb force in single precision: Reference there
    e, f = omm_energy_forces(system, pos, "Reference" if kind == "cluster" else "CPU")
    e_sr, f_sr = ase_energy_forces(atoms, model_files["float64"])  # the same weights (same seed)
    q = np.array([CHARGES[s] for s in atoms.get_chemical_symbols()])
    if kind == "cluster":
        e_el, f_el = coulomb_reference(atoms.positions, q)
        tol_e, tol_f = 1e-9, 1e-9
    else:
        e_el, f_el = ewald_reference(atoms.positions, atoms.cell.array, q)
        tol_e, tol_f = 1e-6, 1e-5  # OpenMM's ewaldErrorTolerance bounds the relative force error
    assert abs((e - e_sr) - e_el) <= tol_e * abs(e_el), ((e - e_sr), e_el)
    f_el_omm = f - f_sr
    err = np.linalg.norm(f_el_omm - f_el, axis=1).max() / np.linalg.norm(f_el, axis=1).max()
    assert err <= tol_f, err


@pytest.mark.parametrize("kind", ["cubic", "triclinic", "cluster"])
def test_hybrid_model_both_long_range_options(hybrid_model, kind):
    """A model with in-model electrostatics and D3: electrostatics='model' equals the ASE calculator to 1e-9;
    'engine' (OpenMM PME with the model's alpha and mesh, the model's short-range entry + D3) equals it to the
    model's requested Ewald accuracy (1e-6 of 14.4 eV/Å in force), and to 1e-9 without a box (direct sums)."""
    atoms = water_cluster(seed=5) if kind == "cluster" else periodic_water(kind, seed=5)
    top, pos = topology_from_atoms(atoms)
    e_ref, f_ref = ase_energy_forces(atoms, hybrid_model)
    platform = "Reference" if kind == "cluster" else "CPU"
    e_model, f_model = omm_energy_forces(MLMDPotential(hybrid_model).createSystem(top), pos, platform)
    assert_close(e_model, f_model, e_ref, f_ref, 1e-9)
    engine = MLMDPotential(hybrid_model, electrostatics="engine")
    system = engine.createSystem(top)
    assert "mlmd electrostatics" in [f.getName() for f in system.getForces()]
    e_eng, f_eng = omm_energy_forces(system, pos, platform)
    if kind == "cluster":
        assert_close(e_eng, f_eng, e_ref, f_ref, 1e-9)
    else:
        rms = np.sqrt(np.mean(np.sum((f_eng - f_ref) ** 2, axis=1)))
        assert rms < 1e-6 * COULOMB_EV_A, rms
        assert abs(e_eng - e_ref) < 1e-6 * COULOMB_EV_A * len(atoms) ** 0.5, (e_eng, e_ref)


@pytest.mark.parametrize("kind", ["triclinic", "cluster"])
def test_three_body_dispersion_forces_survive_openmm_torch_freezing(atm_model, kind):
    """openmm-torch freezes the module, and freezing drops detach(): the ATM forces once came out wrong there
    by ~1e-4 eV/Å. OpenMM equals the ASE calculator (not frozen) to 1e-9."""
    atoms = water_cluster(seed=5) if kind == "cluster" else periodic_water(kind, seed=5)
    top, pos = topology_from_atoms(atoms)
    e_ref, f_ref = ase_energy_forces(atoms, atm_model)
    platform = "Reference" if kind == "cluster" else "CPU"
    e_omm, f_omm = omm_energy_forces(MLMDPotential(atm_model).createSystem(top), pos, platform)
    assert_close(e_omm, f_omm, e_ref, f_ref, 1e-9)


@pytest.mark.parametrize("kind", ["triclinic", "cluster"])
def test_engine_bridge_pairs_once_equals_every_directed_edge(hybrid_model, kind):
    """electrostatics='engine' runs the short range on each pair once plus its reverse (n_mirrored, as the
    model's own forward); the bridge kept for files whose local_energies takes no n_mirrored walks every
    directed edge. Same energy and forces (float64, to round-off)."""
    from mlmd.engines.openmm.bridge import FullListShortRangeBridge, build_bridge
    from mlmd.engines.openmm.model import LoadedModel

    atoms = water_cluster(seed=5) if kind == "cluster" else periodic_water(kind, seed=5)
    periodic = kind != "cluster"
    numbers = atoms.numbers.tolist()
    mirrored = build_bridge(hybrid_model, numbers, None, periodic, short_range_only=True)
    assert mirrored.original_name == "ShortRangeBridge"
    module = LoadedModel.read(hybrid_model).module
    others = list(mirrored.terms.children())
    full = torch.jit.script(FullListShortRangeBridge(module, numbers, None, periodic, float(mirrored.min_width) / 2,
                                                     torch.float64, others, True).eval())
    box = torch.tensor(atoms.cell.array / 10.0) if periodic else None
    out = []
    for bridge in (mirrored, full):
        pos = torch.tensor(atoms.positions / 10.0, requires_grad=True)
        e = bridge(pos, box)
        (g,) = torch.autograd.grad(e, pos)
        out.append((float(e), g.numpy()))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=0, atol=1e-9 * np.abs(out[1][1]).max())


def test_electrostatics_option_errors(model_files, engine_pme_model):
    with pytest.raises(OpenMMSetupError, match="records no electrostatics"):
        MLMDPotential(model_files["float64"], electrostatics="engine")
    assert MLMDPotential(engine_pme_model).electrostatics == "model"  # the file's own, unless asked otherwise
    with pytest.raises(OpenMMSetupError, match="must be one of"):
        MLMDPotential(model_files["float64"], electrostatics="reaction-field")


# ------------------------------------------------------------------------------------------------ dynamics


def test_nve_energy_conservation(nve_model):
    """Velocity Verlet, 0.5 fs, 3000 steps (1.5 ps) of 8 waters in a 7.2 Å box with a float64 model: the total
    energy stays within 0.02 kJ/mol of its start (~2e-4 of the kinetic energy) with no drift above
    0.005 kJ/mol/ps. Measured: 0.007 kJ/mol (spikes while atoms bounce off the wall), 6e-4 kJ/mol/ps.

    A random-weight model has no short-range repulsion (atoms may fall onto each other), so a soft
    double-precision wall, eps (1 - r/0.9 Å)^4 under 0.9 Å (smooth at its cutoff), keeps them apart; the
    Reference platform evaluates it exactly, so what is left to conserve energy is the model's force.
    """
    atoms = water_box(2, 0, spacing=3.6)
    top, pos = topology_from_atoms(atoms)
    system = MLMDPotential(nve_model).createSystem(top)
    wall = openmm.CustomNonbondedForce("100*(1-r/0.09)^4")
    wall.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    wall.setCutoffDistance(0.09)
    for _ in range(system.getNumParticles()):
        wall.addParticle([])
    system.addForce(wall)
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    rows = []
    for _ in range(60):
        integrator.step(50)
        st = ctx.getState(getEnergy=True)
        rows.append((st.getPotentialEnergy().value_in_unit(KJ), st.getKineticEnergy().value_in_unit(KJ)))
    rows = np.array(rows)
    total = rows.sum(1)
    time_ps = np.arange(len(total)) * 50 * 0.5e-3
    assert rows[:, 1].std() > 0.3  # energy really flows between kinetic and potential
    assert np.abs(total - total[0]).max() < 0.02, np.abs(total - total[0]).max()
    assert abs(np.polyfit(time_ps, total, 1)[0]) < 0.005


def test_mixed_ml_mm_water(monomer_model):
    """One water by the model among 124 TIP3P waters (PME): the ML water's MM internal terms are gone, the
    ML–MM coupling is the force field's, energy and forces add up, and NVE conserves the total energy."""
    from mlmd.data.generate import box_length, water_lattice

    atoms = water_lattice(125, box_length(125, 1.0), np.random.default_rng(3))
    top, pos = topology_from_atoms(atoms)
    ff = app.ForceField("amber14/tip3p.xml")
    mm = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=0.7 * unit.nanometer, rigidWater=True)
    ml_atoms = [0, 1, 2]
    mixed = MLMDPotential(monomer_model).createMixedSystem(top, mm, ml_atoms)
    assert mixed.getNumConstraints() == mm.getNumConstraints() - 3  # the ML water is flexible

    # split: E_mixed = E_MM + E_model(ML water alone), forces likewise (rigid TIP3P has no internal energy)
    e_mix, f_mix = omm_energy_forces(mixed, pos)
    e_mm, f_mm = omm_energy_forces(mm, pos)
    ml = Atoms(atoms.numbers[ml_atoms], positions=atoms.positions[ml_atoms], cell=atoms.cell, pbc=True)
    e_ml, f_ml = ase_energy_forces(ml, monomer_model)
    assert abs(e_mix - (e_mm + e_ml)) < 1e-5 * abs(e_mm)
    f_expected = f_mm.copy()
    f_expected[ml_atoms] += f_ml
    assert np.abs(f_mix - f_expected).max() < 1e-4 * np.abs(f_mm).max()
    # openmm-ml's interpolation deep-copies forces through XML, which crashes openmmtorch 1.5: a clear error
    with pytest.raises(OpenMMSetupError, match="interpolate=True is not available"):
        MLMDPotential(monomer_model).createMixedSystem(top, mm, ml_atoms, interpolate=True)

    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    ctx = openmm.Context(mixed, integrator, openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(pos)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 100)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    rows = []
    for _ in range(40):
        integrator.step(20)
        st = ctx.getState(getEnergy=True, getPositions=True)
        xyz = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[ml_atoms]
        rows.append((st.getPotentialEnergy().value_in_unit(KJ), st.getKineticEnergy().value_in_unit(KJ),
                     np.linalg.norm(xyz[1:] - xyz[0], axis=1).max()))
    rows = np.array(rows)
    total = rows[:, 0] + rows[:, 1]
    assert rows[:, 2].max() < 1.3  # the ML water stays a molecule
    # single-precision PME and SETTLE bound conservation here (pure TIP3P does the same): 375 atoms, 0.4 ps
    # measured: max deviation 1.5-2.9 kJ/mol, std 0.006 of the kinetic energy's (pure TIP3P: 1.8, 0.005)
    assert np.abs(total - total[0]).max() < 8.0, np.abs(total - total[0]).max()
    assert total.std() < 0.03 * rows[:, 1].std()


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_element(model_files):
    atoms = water_cluster()
    atoms.symbols[4] = "C"
    top, _ = topology_from_atoms(atoms)
    message = r"atom 4 .* is C \(Z=6\), an element this model does not know; it knows H, O"
    with pytest.raises(OpenMMSetupError, match=message):
        MLMDPotential(model_files["float64"]).createSystem(top)


def test_periodic_model_in_non_periodic_system(periodic_only_model):
    top, _ = topology_from_atoms(water_cluster())
    with pytest.raises(OpenMMSetupError, match="periodic model .* but the System is not periodic"):
        MLMDPotential(periodic_only_model).createSystem(top)
    # and in a periodic System it is accepted
    top, _ = topology_from_atoms(periodic_water("cubic"))
    assert MLMDPotential(periodic_only_model).createSystem(top).usesPeriodicBoundaryConditions()


def test_direct_sum_model_in_periodic_system(direct_sum_model):
    top, _ = topology_from_atoms(periodic_water("cubic"))
    with pytest.raises(OpenMMSetupError, match="non-periodic systems only .* but the System is periodic"):
        MLMDPotential(direct_sum_model).createSystem(top)


def test_box_smaller_than_twice_the_cutoff(model_files):
    atoms = water_box(2, 0)  # 6.2 Å < 2 x 3.5 Å
    top, _ = topology_from_atoms(atoms)
    with pytest.raises(OpenMMSetupError, match=r"box too small .* 6\.2000 Å, less than twice the cutoff"):
        MLMDPotential(model_files["float64"]).createSystem(top)
    # a box that shrinks below the limit during a run (barostat, user) is caught inside the force evaluation
    atoms = periodic_water("cubic")
    top, pos = topology_from_atoms(atoms)
    system = MLMDPotential(model_files["float64"]).createSystem(top)
    small = [v * 0.7 for v in system.getDefaultPeriodicBoxVectors()]
    with pytest.raises(openmm.OpenMMException, match="box too small for the model"):
        omm_energy_forces(system, pos, box=small)


def test_bad_model_arguments(model_files, tmp_path):
    from openmmml import MLPotential

    with pytest.raises(OpenMMSetupError, match="needs modelPath"):
        MLPotential("mlmd")
    with pytest.raises(ModelFileError, match="not found"):
        MLMDPotential(tmp_path / "missing.pt")
    top, _ = topology_from_atoms(water_cluster())
    with pytest.raises(OpenMMSetupError, match="precision"):
        MLMDPotential(model_files["float64"], precision="half").createSystem(top)


def test_checked_step_runs_the_plain_executor_and_the_same_trajectory(model_files):
    """checked_step evaluates under TorchScript's plain executor (faster, see its docstring), gives the trajectory
    plain simulation.step gives, and leaves TorchScript's setting as it found it."""
    from mlmd.engines.openmm import checked_step

    atoms = periodic_water("cubic")
    top, pos = topology_from_atoms(atoms)
    system = MLMDPotential(model_files["float64"]).createSystem(top)
    finals = []
    for use_checked in (False, True):
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
        integrator.setRandomNumberSeed(7)
        sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("CPU"))
        sim.context.setPositions(pos)
        sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 3)
        before = torch._C._get_graph_executor_optimize()
        if use_checked:
            checked_step(sim, 10, r_cut=4.0)
        else:
            sim.step(10)
        assert torch._C._get_graph_executor_optimize() == before
        finals.append(sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    moved = np.abs(finals[0] - np.asarray(pos.value_in_unit(unit.angstrom))).max()
    assert moved > 1e-3  # the atoms did move
    np.testing.assert_allclose(finals[1], finals[0], atol=1e-8)


def test_accuracy_checked_once_per_system_for_the_structures_charges(tmp_path):
    """Building a System checks the model's Ewald/PME parameters against the structure's own charges and cell:
    charges of ±3 e push the estimated force error above the promised accuracy (a warning naming it); the
    water charges of the other models do not."""
    import warnings

    from mlmd.model.longrange import CoulombTerm

    atoms = periodic_water("cubic", seed=2)
    top, _ = topology_from_atoms(atoms)
    for name, charges, expect in (("strong.pt", {1: 1.5, 8: -3.0}, True), ("water.pt", {1: 0.4, 8: -0.8}, False)):
        path = tmp_path / name
        package(make_potential(dtype=torch.float64), path, long_range=[CoulombTerm(charges, accuracy=1e-4)])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            MLMDPotential(path).createSystem(top)
        hits = [w for w in caught if "accuracy" in str(w.message).lower() or "force error" in str(w.message)]
        assert bool(hits) == expect, [str(w.message) for w in caught]
