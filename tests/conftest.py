"""Shared fixtures: small packaged models (random weights, nonzero shifts) and labelled EMT data."""

from __future__ import annotations

import os

# one thread per process: tests start subprocesses and engines beside torch, and OpenMP threads that
# spin-wait on a busy 2-core machine make small matrix products ten times slower
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MPICH ranks (mpirun subprocesses inherit this) sleep instead of spinning while they wait for a message: tests run
# 4 and 8 ranks on 2 cores, where a spinning rank takes the core from the rank it waits for (4-rank NVE: ~1/2 to
# 1/3 of the CPU time; the results do not change)
os.environ.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# CI (HYPOTHESIS_PROFILE=ci, set by .ci/run) draws the same fuzz examples every run, so a landing is never
# refused by a new random draw; local runs draw fresh examples each time and are where new failures turn up
# (a found failure becomes a plain regression test, as in tests/workflows/test_domain.py)
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:
    pass
REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="also run the tests marked long (CI: make test-long)")


def pytest_collection_modifyitems(config, items):
    """The default run (make test) leaves out the tests marked long: checks that take minutes on 2 cores, each with
    a shorter counterpart in the default run. `--long -m long` runs them alone (CI's second command)."""
    if config.getoption("--long"):
        return
    long_items = [item for item in items if item.get_closest_marker("long")]
    if long_items:
        config.hook.pytest_deselected(items=long_items)
        items[:] = [item for item in items if not item.get_closest_marker("long")]


def make_potential(atomic_numbers=(1, 8), r_cut=3.5, dtype=torch.float64, seed=0, **kw):
    from mlmd.model.potential import ShortRangePotential

    torch.manual_seed(seed)
    args = dict(channels=8, vector_channels=4, l_max=2, n_layers=2, n_basis=6, radial_hidden=16, avg_num_neighbors=8.0)
    args.update(kw)
    pot = ShortRangePotential(list(atomic_numbers), r_cut, **args).to(dtype)
    with torch.no_grad():
        pot.shifts.copy_(torch.linspace(-3.0, -1.0, len(atomic_numbers), dtype=dtype))
        pot.scale.fill_(0.7)
    return pot.eval()


CHARGE_OFFSETS = {1: 0.5, 8: -0.7}  # per-species charge offsets of make_charged_potential (water: +0.3 e raw)


def make_charged_potential(seed: int = 0, dtype=torch.float64, offsets: dict | None = None):
    """make_potential with a charge head, random weights: charges that vary by a few 0.01 e with the environment
    around the per-species offsets, and softnesses that vary between atoms (the excess charge is not spread
    evenly)."""
    offsets = offsets or CHARGE_OFFSETS
    pot = make_potential(seed=seed, dtype=torch.float64, charge_head=True)
    with torch.no_grad():
        # scale the random head's electronegativities up to charge transfers of a few 0.01 e
        pot.network.charge_readout.node.net[-1].weight[0].mul_(300.0)
        pot.network.charge_readout.node.net[-1].weight[1].mul_(300.0)
        pot.charge_offsets.copy_(torch.tensor([offsets[1], offsets[8]]))
    return pot.to(dtype)


IONIC_OFFSETS = {1: 2.0, 8: -2.0}  # ZnO-like formal charges on the H/O test models' two species


def zno_like(repeat=(3, 3, 2), seed: int = 3):
    """Wurtzite ZnO (a 3.25, c 5.21 Å) with H on the Zn sites, rattled: with IONIC_OFFSETS a ±2 ionic crystal that
    the H/O test models can serve (Q = sum q^2 / sqrt(N V) = 0.7, where the reference density's parameters miss
    the promised force accuracy)."""
    from ase.build import bulk

    atoms = bulk("ZnO", "wurtzite", a=3.25, c=5.21).repeat(repeat)
    atoms.numbers[atoms.numbers == 30] = 1
    atoms.rattle(0.05, seed=seed)  # forces vanish by symmetry in the perfect crystal
    return atoms


def make_bp(kind: str, seed: int = 0, r_cut: float = 3.5):
    """A small H/O Behler-Parrinello potential (bp-acsf or bp-soap), float64, random weights."""
    from mlmd.model.behler_parrinello import BehlerParrinelloPotential

    torch.manual_seed(seed)
    desc = {"n_radial": 6, "n_angular": 2} if kind == "bp-acsf" else {"n_max": 4, "l_max": 3, "sigma": 0.5}
    pot = BehlerParrinelloPotential([1, 8], r_cut, kind, [16, 16], "silu", desc).double()
    with torch.no_grad():
        pot.shifts.copy_(torch.tensor([-1.5, -3.0], dtype=torch.float64))
        pot.scale.fill_(0.8)
        pot.network.feature_std.uniform_(0.05, 0.2)  # larger inputs: forces of a sizeable magnitude
    return pot.eval()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Packaged H/O models in float64 and float32 (random weights: tests are about the contract, not fit)."""
    from mlmd.deploy.export import package

    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        path = d / f"ho_{name}.pt"
        package(make_potential(dtype=dtype), path)
        out[name] = path
    return out


@pytest.fixture(scope="session")
def compiled_model_file(tmp_path_factory):
    """compiled_model_file(dtype): make_potential packaged with --compile aoti (the one-call program and the layer
    programs), compiled on first use in this session (a few minutes per dtype)."""
    from mlmd.deploy.export import package

    made: dict[str, Path] = {}

    def get(dtype: str = "float64") -> Path:
        if dtype not in made:
            path = tmp_path_factory.mktemp("aoti_" + dtype) / "m.pt"
            package(make_potential(dtype=getattr(torch, dtype)), path, compile="aoti")
            made[dtype] = path
        return made[dtype]

    return get


def water_box(n_side: int = 2, seed: int = 0, spacing: float = 3.1):
    """Periodic box of randomly oriented water molecules on a grid."""
    from mlmd.data.generate import water_lattice

    n = n_side**3
    return water_lattice(n, spacing * n_side, np.random.default_rng(seed))


@pytest.fixture(scope="session")
def emt_data(tmp_path_factory) -> Path:
    """Perturbed Cu/Al cells labelled with ASE's EMT (an independent potential) as extxyz."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(20):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        a.symbols[rng.choice(len(a), 2, replace=False)] = "Al"
        a.set_cell(a.cell * (1 + rng.uniform(-0.03, 0.03)), scale_atoms=True)
        a.positions += rng.normal(0, 0.1, a.positions.shape)
        a.calc = EMT()
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        frames.append(a)
    path = tmp_path_factory.mktemp("data") / "emt.xyz"
    ase.io.write(path, frames)
    return path


CARD_NULL = object()  # with_card_changes: set the key to JSON null (None removes it)


def with_card_changes(src: Path, dst: Path, **changes) -> Path:
    """A copy of a packaged model file whose card has these keys set (None: removed; CARD_NULL: null); the weights
    are unchanged, so the checksum still holds."""
    import json

    from mlmd import keys as K

    extra = {K.META_FILE: ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    card = json.loads(extra[K.META_FILE])
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        elif value is CARD_NULL:
            card[key] = None
        else:
            card[key] = value
    torch.jit.save(module, str(dst), _extra_files={K.META_FILE: json.dumps(card)})
    return dst


@pytest.fixture(scope="session")
def domain_model(tmp_path_factory, model_files) -> Path:
    """The float64 H/O model (r_cut 3.5 Å) with a training domain taken from water_box(2): H-H 1.514, H-O 0.957,
    O-O 2.651 Å, 9.93 Å^3 per atom (limits 0.8x those, volume [7.94, 12.41] Å^3)."""
    from mlmd import keys as K
    from mlmd.deploy.domain import training_domain

    box = water_box(2)
    dom = training_domain([(box.numbers, box.positions, box.cell.array, box.pbc, None)], ["H", "O"], 3.5)
    path = tmp_path_factory.mktemp("domain") / "ho_domain.pt"
    return with_card_changes(model_files["float64"], path, **{K.CARD_TRAINING_DOMAIN: dom.to_json()})


def rms(f) -> float:
    """RMS of the per-atom force norms ([N, 3] numpy array or torch tensor)."""
    return float(((f**2).sum(1).mean()) ** 0.5)


def ase_forces(atoms, model, **kw) -> np.ndarray:
    """Forces of `atoms` (a copy) from the ASE calculator on the packaged model file (kw: calculator options)."""
    from mlmd.engines.ase import MLMDCalculator

    a = atoms.copy()
    a.calc = MLMDCalculator(model, **kw)
    return a.get_forces()


def openmm_pme(pos: torch.Tensor, cell: torch.Tensor, q: torch.Tensor, settings: dict) -> tuple[float, torch.Tensor]:
    """Energy (eV) and forces (eV/Å) of point charges q at pos (Å) in cell from OpenMM's own NonbondedForce PME
    (Reference platform) with ewald_params.openmm_pme_parameters' settings: an independent PME."""
    import openmm
    from openmm import unit

    from mlmd.units import EV_TO_KJ_PER_MOL

    system = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(settings["cutoff_nm"])
    nb.setPMEParameters(settings["alpha_per_nm"], settings["nx"], settings["ny"], settings["nz"])
    nb.setUseDispersionCorrection(False)
    for qi in q.tolist():
        system.addParticle(1.0)
        nb.addParticle(qi, 0.1, 0.0)
    system.addForce(nb)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(np.asarray(row) / 10.0)) for row in cell.tolist()])
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions((pos.numpy() / 10.0) * unit.nanometer)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    forces = torch.tensor(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return energy, forces / EV_TO_KJ_PER_MOL / 10.0
