"""Predicted-charge electrostatics: exact charge conservation, forces and stress with dq/dR, training with a
charge loss, the packaged file equal to the in-memory model, and the engines that must refuse it.

References: finite differences of the packaged energy; the total charge given to the model; independent D3 and
Coulomb modules for the decomposition; numpy for the charge loss.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms

from conftest import CHARGE_OFFSETS, REPO, make_charged_potential, make_potential, water_box
from mlmd.deploy.export import package
from mlmd.deploy.load import load_model
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.dispersion import D3Dispersion
from mlmd.model.longrange import DispersionTerm
from mlmd.model.predicted_charges import PredictedCoulombTerm
from mlmd.units import COULOMB_EV_A
from mlmd.validate_structures import random_configuration

OFFSETS = CHARGE_OFFSETS  # a water's raw charges sum to +0.3 e: the correction has work to do
D3 = {"atomic_numbers": [1, 8], "functional": "gfn2", "cutoff": 10.0, "cutoff_cn": 10.0}
charged_potential = make_charged_potential


def predicted_terms(method: str = "auto") -> list:
    return [PredictedCoulombTerm(OFFSETS, accuracy=1e-6, method=method), DispersionTerm(**D3)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("predicted")
    out = {}
    for name, dtype, method in (("float64", torch.float64, "auto"), ("float32", torch.float32, "auto"),
                                ("pme", torch.float64, "pme")):
        out[name] = d / f"{name}.pt"
        package(charged_potential(dtype=dtype), out[name], long_range=predicted_terms(method))
    out["short"] = d / "short.pt"
    package(make_potential(), out["short"])
    return out


@functools.lru_cache(maxsize=8)
def calculator(path) -> MLMDCalculator:
    return MLMDCalculator(path)


def energy(atoms: Atoms, path) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator(path)
    return atoms.get_potential_energy()


def cluster(seed: int, total_charge: float = 0.0) -> Atoms:
    box = water_box(2, seed, spacing=3.3)
    a = Atoms(box.numbers, positions=box.positions)
    a.info["charge"] = total_charge
    return a


# ------------------------------------------------------------------------------------------ conservation


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_total_charge_is_conserved_exactly(models, dtype):
    rng = np.random.default_rng(1)
    calc = MLMDCalculator(models[dtype])
    module, _ = load_model(models[dtype])
    tol = 1e-12 if dtype == "float64" else 2e-6
    excess = []
    for k in range(6):
        periodic = k % 2 == 0
        natoms = int(rng.integers(5, 40))
        atoms = random_configuration([1, 8, 1], 2.2 * natoms ** (1 / 3) + 3.0, rng, natoms, periodic=periodic)
        total = 0.0 if periodic else float(rng.choice([0.0, 1.0, -2.0, 0.5]))
        atoms.info["charge"] = total
        atoms.calc = calc
        q = atoms.get_charges()
        excess.append(abs(sum(OFFSETS[int(z)] for z in atoms.numbers) - total))
        assert abs(q.sum() - total) <= tol * max(1.0, natoms * 0.5), (q.sum(), total)
        # environment-dependent, not the per-species offsets shifted uniformly
        dev = q - np.array([OFFSETS[int(z)] for z in atoms.numbers])
        assert np.ptp(dev[atoms.numbers == 1]) > 5e-3
        # the exported entry gives the same charges
        args = [torch.as_tensor(atoms.positions, dtype=getattr(torch, dtype)),
                torch.as_tensor(atoms.cell.array, dtype=getattr(torch, dtype)),
                torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.pbc)]
        q_entry = module.charges(*args, total)
        assert np.allclose(q_entry.double().numpy(), q, atol=1e-6 if dtype == "float32" else 1e-13)
    assert max(excess) > 0.5  # the per-species offsets alone are far from the total charge


def test_batched_structures_each_keep_their_total_charge():
    """The training path (several structures in one batch, each with its own total charge)."""
    from mlmd.data.graph import GraphCache, collate
    from mlmd.data.structures import structure_from_atoms
    from mlmd.model.assembly import EnergyAssembly
    from mlmd.train.dataset import z_to_species_table

    structs = []
    for seed, total in ((0, 0.0), (1, 1.0), (2, -1.5)):
        a = cluster(seed, total)
        structs.append(structure_from_atoms(a))
    structs.append(structure_from_atoms(water_box(2, 3)))
    assert [s.total_charge for s in structs] == [0.0, 1.0, -1.5, 0.0]
    cache = GraphCache(structs, 3.5)
    b = collate(structs, cache.edges, z_to_species_table([1, 8]), torch.float64)
    term = predicted_terms()[0].double()
    out = EnergyAssembly(charged_potential(), [term]).batch_properties(b, True, True, False)
    sums = torch.zeros(4, dtype=torch.float64).index_add(0, b["batch"], out["charges"])
    assert torch.allclose(sums, torch.tensor([0.0, 1.0, -1.5, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_charges_stay_local_and_separated_fragments_only_feel_coulomb(tmp_path):
    """Charge moves along edges only: fragments farther apart than (n_layers + 1) r_cut keep the charges they
    have alone (each water neutral), and the energy of the pair is the sum of theirs plus the Coulomb energy
    between the two sets of charges (numpy) -- no charge transfer across the gap, whatever the distance."""
    neutral = {1: 0.4, 8: -0.8}
    path = tmp_path / "neutral.pt"
    package(charged_potential(offsets=neutral), path,
            long_range=[PredictedCoulombTerm(neutral, accuracy=1e-6), DispersionTerm(**D3)])
    a, b = cluster(11)[:9], cluster(12)[:6]
    results = {}
    for gap in (15.0, 40.0):
        both = a + b
        both.positions[len(a):] += [gap + 8.0, 0.0, 0.0]
        for name, atoms in (("a", a), ("b", both[len(a):]), ("ab", both)):
            atoms = atoms.copy()
            atoms.calc = calculator(path)
            results[name] = (atoms.get_potential_energy(), atoms.get_charges(), atoms.positions)
        (e_a, q_a, _), (e_b, q_b, p_b), (e_ab, q_ab, _) = results["a"], results["b"], results["ab"]
        assert np.ptp(q_a[a.numbers == 1]) > 5e-3  # the charges do depend on the environment
        assert abs(q_a.sum()) < 1e-12 and abs(q_b.sum()) < 1e-12
        assert np.allclose(q_ab, np.concatenate([q_a, q_b]), atol=1e-12, rtol=0)
        r = np.linalg.norm(a.positions[:, None, :] - p_b[None, :, :], axis=2)
        cross = COULOMB_EV_A * float(np.sum(q_a[:, None] * q_b[None, :] / r))
        assert abs(cross) > 1e-6
        assert abs((e_ab - e_a - e_b) - cross) < 1e-12 * abs(e_ab) + 1e-9, (e_ab - e_a - e_b, cross)


def test_charged_periodic_cell_is_refused(models):
    a = water_box(2, 4)
    a.info["charge"] = 1.0
    a.calc = MLMDCalculator(models["float64"])
    with pytest.raises(ValueError, match=r"periodic cell with total charge 1\.0* e: Ewald/PME need a neutral cell"):
        a.get_potential_energy()


# ------------------------------------------------------------------------------------------ derivatives


def _fd_forces(atoms, path, checked, h=1e-4):
    out = []
    for atom, axis in checked:
        p, m = atoms.copy(), atoms.copy()
        p.positions[atom, axis] += h
        m.positions[atom, axis] -= h
        out.append(-(energy(p, path) - energy(m, path)) / (2 * h))
    return np.array(out)


def _frozen_charge_forces(atoms: Atoms) -> np.ndarray:
    """Forces of the same energy with the predicted charges held fixed (no dq/dR), from the in-memory pieces."""
    from mlmd.data.graph import neighbor_list

    pot = charged_potential()
    coulomb, disp = (t.double() for t in predicted_terms())
    pos = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    pbc = torch.tensor(atoms.pbc)
    numbers = torch.tensor(atoms.numbers)
    ei, sh = (torch.tensor(x) for x in neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, pot.r_cut))
    vec = pos[ei[1]] - pos[ei[0]] + sh @ cell
    e_short, raw, soft = pot.energies_and_charges((numbers == 8).long(), ei, vec)
    total = torch.tensor([float(atoms.info.get("charge", 0.0))], dtype=torch.float64)
    q = coulomb.conserve(raw, soft, total).detach()
    e = e_short.sum() + coulomb(pos, cell, pbc, q, float(total)).sum() + disp(pos, cell, numbers, pbc).sum()
    (g,) = torch.autograd.grad(e, pos)
    return -g.numpy()


@pytest.mark.parametrize("case", ["periodic", "pme", "cluster+1"])
def test_forces_and_stress_match_finite_differences(models, case):
    if case == "cluster+1":
        atoms, path = cluster(6, 1.0), models["float64"]
    else:
        atoms, path = water_box(2, 7), models["pme" if case == "pme" else "float64"]
        atoms.positions += np.random.default_rng(7).normal(0, 0.05, atoms.positions.shape)
    a = atoms.copy()
    a.calc = MLMDCalculator(path)
    f = a.get_forces()
    checked = [(0, 0), (1, 1), (5, 2), (13, 0)]
    fd = _fd_forces(atoms, path, checked)
    got = np.array([f[i, k] for i, k in checked])
    assert np.allclose(got, fd, atol=1e-6, rtol=1e-6), np.abs(got - fd).max()
    if case != "pme":
        # the charges' dependence on the positions is a visible part of the force: without it the test fails
        frozen = _frozen_charge_forces(atoms)
        assert np.abs(frozen - f).max() > 1e-2
        assert np.abs(np.array([frozen[i, k] for i, k in checked]) - fd).max() > 1e-3
    if not atoms.pbc.all():
        return
    s = a.get_stress(voigt=False)
    vol = atoms.get_volume()
    for i, j in [(0, 0), (1, 2), (2, 2)]:
        eps = np.zeros((3, 3))
        eps[i, j] += 0.5e-5
        eps[j, i] += 0.5e-5
        es = []
        for sign in (1, -1):
            b = atoms.copy()
            b.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            es.append(energy(b, path))
        fd_s = (es[0] - es[1]) / 2e-5 / vol
        assert abs(fd_s - s[i, j]) < 1e-7 + 1e-5 * abs(fd_s), (i, j, fd_s, s[i, j])


def test_packaged_energy_is_short_range_plus_coulomb_of_its_charges_plus_d3(models):
    """Nothing counted twice: the file's energy = network energy + Coulomb(predicted q) + D3, term by term."""
    from mlmd.model.electrostatics import Electrostatics

    a = cluster(8, -1.0)
    a.calc = MLMDCalculator(models["float64"])
    e_total, q = a.get_potential_energy(), a.get_charges()
    pos, numbers, pbc = torch.tensor(a.positions), torch.tensor(a.numbers), torch.tensor(a.pbc)
    cell = torch.zeros(3, 3, dtype=torch.float64)
    e_coul = float(Electrostatics(accuracy=1e-6).double()(pos, cell, pbc, torch.tensor(q)))
    e_d3 = float(D3Dispersion(**D3).double()(pos, cell, numbers, pbc))
    from mlmd.data.graph import neighbor_list

    pot = charged_potential()
    ei, sh = (torch.tensor(x) for x in neighbor_list(a.positions, np.zeros((3, 3)), a.pbc, pot.r_cut))
    e_short = float(pot.energies_and_charges((numbers == 8).long(), ei, pos[ei[1]] - pos[ei[0]])[0].sum().detach())
    assert abs(e_coul) > 1.0 and abs(e_d3) > 1e-3
    assert abs(e_total - (e_short + e_coul + e_d3)) < 1e-10 * abs(e_total)


def test_metadata_records_the_mode_and_ewald_parameters(models):
    module, card = load_model(models["float64"])
    el = card.long_range.electrostatics.to_json()
    assert card.charges_mode == "predicted" and el["mode"] == "predicted"
    assert card.predicts_charges and card.takes_total_charge and card.fixed_charges == {}
    for key in ("method", "accuracy", "smearing", "alpha", "r_cut", "k_cutoff", "grid_spacing",
                "interpolation_order", "charge_model", "initial_charges"):
        assert key in el, key
    assert card.hparams["charge_head"] is True
    assert card.long_range.dispersion.kind == "d3bj"
    assert module.predicts_charges and module.has_long_range


def test_models_without_predicted_charges(models):
    from ase.calculators.calculator import PropertyNotImplementedError

    a = water_box(2, 9)
    a.calc = MLMDCalculator(models["short"])
    with pytest.raises(PropertyNotImplementedError, match="no electrostatics"):
        a.get_charges()
    module, _ = load_model(models["short"])
    with pytest.raises(torch.jit.Error, match="no electrostatics, so no charges"):
        module.charges(torch.tensor(a.positions), torch.tensor(a.cell.array), torch.tensor(a.numbers),
                       torch.tensor(a.pbc))


def test_committees_of_predicted_charge_models_are_refused():
    from mlmd.config import config_from_dict
    from mlmd.deploy.packaged import PackagedEnsemble
    from mlmd.model.ensemble import EnsemblePotential
    from mlmd.train.ensemble import train_ensemble

    members = EnsemblePotential([charged_potential(seed=0), charged_potential(seed=1)])
    with pytest.raises(ValueError, match="committee of predicted-charge models is not supported"):
        PackagedEnsemble(members, [1, 8], 3.5, 2, predicted_terms())
    cfg = config_from_dict({"model": {"long_range": {"electrostatics": "predicted"}}, "train": {"ensemble": 2}})
    with pytest.raises(ValueError, match="ensemble of predicted-charge models is not supported"):
        train_ensemble(cfg)


def test_predicted_charges_need_the_equivariant_model():
    from mlmd.config import config_from_dict
    from mlmd.model.potential import build_potential

    cfg = config_from_dict({"model": {"kind": "bp-acsf", "long_range": {"electrostatics": "predicted"}}})
    with pytest.raises(ValueError, match="'predicted' needs model.kind 'equivariant'"):
        build_potential([1, 8], cfg.model, 10.0)


# ------------------------------------------------------------------------------------------ training


def test_charge_loss_term():
    from mlmd.train.loss import weighted_loss

    ref = np.array([0.3, -0.6, 0.3, 0.1])
    pred = np.array([0.25, -0.55, 0.31, 0.0])
    has = np.array([True, True, True, False])
    batch = {"n_atoms": torch.tensor([4]), "energy": torch.tensor([float("nan")]),
             "charges": torch.tensor(ref), "has_charges": torch.tensor(has)}
    out = {"energy": torch.tensor([0.0]), "charges": torch.tensor(pred)}
    loss = weighted_loss(out, batch, 1.0, 0.0, 0.0, charges_weight=7.0)
    assert float(loss) == pytest.approx(7.0 * np.mean((pred - ref)[has] ** 2), rel=1e-12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import ase.io

    from mlmd.config import load_config
    from mlmd.train.trainer import Trainer

    d = tmp_path_factory.mktemp("train")
    frames = ase.io.read(REPO / "inputs" / "water" / "water_gfn2.xyz", "-6:")
    ase.io.write(d / "w.xyz", frames)
    cfg = {
        "data": {"path": str(d / "w.xyz"), "val_fraction": 0.34, "test_fraction": 0.0},
        "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                  "radial_hidden": 8, "dtype": "float64",
                  "long_range": {"electrostatics": "predicted", "charges": "fit", "dispersion": "d3bj",
                                 "d3_cutoff": 8.0, "d3_smooth_width": 0.0, "d3_tail_correction": False}},
        "train": {"epochs": 4, "batch_size": 2, "charges_weight": 10.0, "lr": 0.01},
        "output_dir": str(d / "run"),
    }
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    tr = Trainer(load_config(d / "c.yaml"), progress=False)
    from mlmd.train.dataset import evaluate_dataset

    before = evaluate_dataset(tr.model, tr.val_data, charge_term=tr.charge_term)
    results = tr.train()
    return d, tr, before, results


def test_training_with_the_charge_loss_lowers_the_loss(trained):
    _, tr, before, results = trained
    assert "charges_mae" in before and "charges_mae" in results["val"]
    assert tr.history[-1]["train_loss"] < tr.history[0]["train_loss"]
    assert tr._val_loss(results["val"]) < tr._val_loss(before)
    # the head starts from the per-species charges fitted to the reference (a water's O near -0.59 e)
    assert tr.long_range_charges[8] == pytest.approx(-0.586, abs=0.02)
    assert abs(tr.long_range_charges[8] + 2 * tr.long_range_charges[1]) < 1e-12


def test_packaged_file_equals_the_in_memory_model(trained):
    """The trainer's own evaluation (network + predicted Coulomb on labels without D3) plus an independent D3
    equals the packaged file in ASE: energy, forces, stress and charges."""
    from mlmd.deploy.export import package_checkpoint
    from mlmd.model.checkpoint import load_checkpoint_model
    from mlmd.train.dataset import predict_batch

    d, tr, _, _ = trained
    package_checkpoint(d / "run" / "checkpoint_best.pt", d / "m.pt")
    _, card = load_model(d / "m.pt")
    assert card.charges_mode == "predicted"
    model = load_checkpoint_model(d / "run" / "checkpoint_best.pt")
    batch = next(tr.val_data.batches(1))
    pred = predict_batch(model, batch, stress=False, create_graph=False, charge_term=tr.charge_term)
    s = tr.val_data.graphs.structures[0]
    a = s.to_atoms()
    a.calc = MLMDCalculator(d / "m.pt")
    pos, cell, numbers, pbc = (torch.tensor(x) for x in (s.positions, s.cell, s.numbers, s.pbc))
    d3 = D3Dispersion([1, 8], "gfn2", cutoff=8.0, cutoff_cn=8.0).double()
    pos.requires_grad_(True)
    e_d3 = d3(pos, cell, numbers, pbc)
    (g_d3,) = torch.autograd.grad(e_d3, pos)
    e = float(pred["energy"][0].detach()) + float(e_d3.detach())
    assert abs(a.get_potential_energy() - e) < 1e-9 * abs(e)
    assert np.allclose(a.get_forces(), pred["forces"].detach().numpy() - g_d3.numpy(), atol=1e-8)
    assert np.allclose(a.get_charges(), pred["charges"].detach().numpy(), atol=1e-12)
    assert abs(a.get_charges().sum()) < 1e-12


def test_charges_weight_needs_predicted_charges(tmp_path):
    import ase.io

    from mlmd.config import config_from_dict
    from mlmd.train.trainer import Trainer

    ase.io.write(tmp_path / "w.xyz", ase.io.read(REPO / "inputs" / "water" / "water_gfn2.xyz", "-3:"))
    cfg = config_from_dict({"data": {"path": str(tmp_path / "w.xyz"), "val_fraction": 0.34, "test_fraction": 0.0},
                            "model": {"long_range": {"electrostatics": "fixed"}},
                            "train": {"charges_weight": 1.0}, "output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="charges_weight > 0 needs model.long_range.electrostatics 'predicted'"):
        Trainer(cfg, progress=False)


# ------------------------------------------------------------------------------------------ engines


def test_local_charges_entry_on_an_engine_graph(models):
    """local_charges (what LAMMPS calls on its own graph), conserved as PredictedCoulombTerm.conserve does, gives
    the charges of charges() and the energies of local_energies: ASE's full neighbour list as the graph."""
    from ase.neighborlist import neighbor_list

    module, _ = load_model(models["float64"])
    a = water_box(2, 3, spacing=3.3)
    i, j, shifts = neighbor_list("ijS", a, module.r_cut)
    args = [torch.tensor(a.positions), torch.tensor(a.cell.array), torch.tensor(a.numbers), torch.tensor(a.pbc)]
    edges = torch.tensor(np.stack([i, j]), dtype=torch.long)
    vec = torch.tensor(a.positions[j] - a.positions[i] + shifts @ a.cell.array)
    species = module.species_of(args[2])
    e, raw, w = module.local_charges(species, edges, vec, len(a))
    q = raw - w * (raw.sum() - 0.0) / w.sum()
    np.testing.assert_allclose(q.detach().numpy(), module.charges(*args).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.detach().numpy(), module.local_energies(species, edges, vec, len(a)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    # the raw charges sum to the offsets' +0.3 e per water (offsets set from float32 literals), not yet to 0: the
    # engine conserves the total charge
    assert abs(float(raw.sum()) - 0.3 * len(a) / 3) < 1e-6
    short, _ = load_model(models["short"])
    with pytest.raises(torch.jit.Error, match="does not predict charges"):
        short.local_charges(species, edges, vec, len(a))


def test_lammps_lines_for_a_predicted_charge_model(models):
    """pair_style mlmd alone: it predicts the charges and sums their Ewald energy (tests/engines/lammps/
    test_lammps_charges.py runs it); clusters are refused with the reason."""
    from mlmd.engines import lammps as L

    lines = L.pair_lines(models["float64"])
    assert lines[0].startswith("pair_style mlmd ") and not any("kspace" in x or "coul" in x for x in lines)
    with pytest.raises(ValueError, match="predicts its charges: pair_style mlmd sums their Ewald energy in boxes "
                       "periodic"):
        L.pair_lines(models["float64"], periodic=False)


@pytest.mark.openmm
@pytest.mark.parametrize("kind", ["periodic", "cluster"])
def test_openmm_runs_it_in_model_and_refuses_native_pme(models, kind):
    import openmm
    from openmm import unit

    from mlmd.engines.openmm import MLMDPotential, OpenMMSetupError, topology_from_atoms
    from mlmd.units import EV_TO_KJ_PER_MOL

    atoms = water_box(3, 10) if kind == "periodic" else cluster(10)
    top, pos = topology_from_atoms(atoms)
    with pytest.raises(OpenMMSetupError, match="predicts its charges .* Use electrostatics='model'"):
        MLMDPotential(models["float64"], electrostatics="engine")
    system = MLMDPotential(models["float64"]).createSystem(top)
    platform = openmm.Platform.getPlatformByName("Reference" if kind == "cluster" else "CPU")
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), platform)
    ctx.setPositions(pos)
    st = ctx.getState(getEnergy=True, getForces=True)
    kj = unit.kilojoule_per_mole
    e = st.getPotentialEnergy().value_in_unit(kj) / EV_TO_KJ_PER_MOL
    f = np.asarray(st.getForces(asNumpy=True).value_in_unit(kj / unit.angstrom)) / EV_TO_KJ_PER_MOL
    a = atoms.copy()
    a.calc = MLMDCalculator(models["float64"])
    assert abs(e - a.get_potential_energy()) < 1e-9 * abs(e)
    assert np.abs(f - a.get_forces()).max() < 1e-8 * np.abs(f).max()
