"""Committee models: mean and spread against the members evaluated one by one; training and packaging."""

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import make_potential, water_box
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.ensemble import EnsemblePotential


@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    """Three random H/O members (float64) packaged together and one by one."""
    d = tmp_path_factory.mktemp("committee")
    members = [make_potential(seed=k) for k in range(3)]
    singles = []
    for k, m in enumerate(members):
        package(m, d / f"member_{k}.pt")
        singles.append(d / f"member_{k}.pt")
    package(EnsemblePotential([make_potential(seed=k) for k in range(3)]), d / "committee.pt")
    return d / "committee.pt", singles


def _evaluate(path, atoms):
    a = atoms.copy()
    a.calc = MLMDCalculator(path)
    return a.get_potential_energy(), a.get_forces(), a.get_stress(), a.get_potential_energies(), a.calc


def test_mean_and_spread_equal_members_one_by_one(committee):
    path, singles = committee
    atoms = water_box(2, seed=3)
    atoms.rattle(0.05, seed=1)
    per = [_evaluate(p, atoms) for p in singles]
    e_k = np.array([x[0] for x in per])
    f_k = np.array([x[1] for x in per])  # [K, N, 3]
    s_k = np.array([x[2] for x in per])
    ea_k = np.array([x[3] for x in per])
    e, f, s, ea, calc = _evaluate(path, atoms)
    np.testing.assert_allclose(e, e_k.mean(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(f, f_k.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(s, s_k.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ea, ea_k.mean(0), rtol=0, atol=1e-10)
    r = calc.results
    np.testing.assert_allclose(r["member_energies"], e_k, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r["energy_std"], e_k.std(), rtol=1e-9)
    np.testing.assert_allclose(r["energies_std"], ea_k.std(0), rtol=1e-9, atol=1e-12)
    dev = f_k - f_k.mean(0)
    np.testing.assert_allclose(r["forces_std"], np.sqrt((dev**2).sum(2).mean(0)), rtol=1e-9, atol=1e-12)
    assert r["energy_std"] > 1e-3 and r["forces_std"].min() > 0  # different random members disagree


def test_committee_forces_are_gradient_of_mean_energy(committee):
    """The committee-mean forces conserve energy: -dE_mean/dR by central differences."""
    path, _ = committee
    atoms = water_box(2, seed=4)
    calc = MLMDCalculator(path)
    atoms.calc = calc
    f = atoms.get_forces()
    h = 1e-5
    for i, c in [(0, 0), (5, 2), (17, 1)]:
        a = atoms.copy()
        a.calc = calc
        a.positions[i, c] += h
        ep = a.get_potential_energy()
        a.positions[i, c] -= 2 * h
        em = a.get_potential_energy()
        assert abs(-(ep - em) / (2 * h) - f[i, c]) < 1e-7


def test_single_model_has_no_uncertainty(committee):
    _, singles = committee
    calc = MLMDCalculator(singles[0])
    assert calc.n_members == 1 and "energy_std" not in calc.implemented_properties


def test_members_must_share_cutoff():
    with pytest.raises(ValueError, match="share elements and cutoff"):
        EnsemblePotential([make_potential(r_cut=3.5), make_potential(r_cut=4.0)])
    with pytest.raises(ValueError, match="at least two"):
        EnsemblePotential([make_potential()])


def _ensemble_config(tmp_path, data, out="run"):
    cfg = {
        "data": {"path": str(data), "val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"r_cut": 4.0, "channels": 8, "vector_channels": 4, "l_max": 1, "n_layers": 1, "n_basis": 6,
                  "radial_hidden": 16, "dtype": "float64"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "seed": 1, "ensemble": 2},
        "output_dir": str(tmp_path / out),
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_and_package_ensemble(tmp_path, emt_data):
    from mlmd.cli import main
    from mlmd.deploy.load import load_model

    cfg = _ensemble_config(tmp_path, emt_data)
    assert main(["train", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "run"
    manifest = json.loads((run / "ensemble.json").read_text())
    assert manifest["members"] == ["member_0", "member_1"] and manifest["seeds"][0] != manifest["seeds"][1]
    splits = [json.loads((run / m / "split.json").read_text()) for m in manifest["members"]]
    assert splits[0] == splits[1]  # same train/val/test split, different seeds
    w0, w1 = (torch.load(run / m / "checkpoint_best.pt", weights_only=True)["model_state"] for m in manifest["members"])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].dtype.is_floating_point)
    assert main(["package", str(run), "-o", str(tmp_path / "ens.pt"), "--no-validate"]) == 0
    module, card = load_model(tmp_path / "ens.pt")
    assert card.n_members == 2 and module.n_members == 2 and len(card.member_metrics) == 2
    assert card.has_uncertainty and card.has_member_entry

    # rerun with the same seeds: the same members (reproducible)
    cfg2 = _ensemble_config(tmp_path, emt_data, out="run2")
    assert main(["train", str(cfg2), "--no-progress"]) == 0
    v0 = torch.load(tmp_path / "run2" / "member_0" / "checkpoint_best.pt", weights_only=True)["model_state"]
    for k in w0:
        torch.testing.assert_close(v0[k], w0[k], rtol=0, atol=0)

    # resume: finished members are kept, not retrained
    assert main(["train", str(cfg), "--no-progress", "--resume"]) == 0


def test_local_energies_of_member_is_that_members_row(committee):
    """The engines' per-member entry (one backward pass per member) gives the rows of local_member_energies."""
    from vesin_torch import NeighborList

    path, _ = committee
    module = torch.jit.load(str(path))
    atoms = water_box(2, seed=5)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    i, j, s = NeighborList(cutoff=3.5, full_list=True).compute(pos, cell, True, "ijS", True)
    edges = torch.stack([i.long(), j.long()])
    vectors = pos[j] - pos[i] + s.to(pos.dtype) @ cell
    species = module.species_of(torch.tensor(atoms.numbers))
    n = len(atoms) - 4  # the first n are the engine's local atoms
    rows = module.local_member_energies(species, edges, vectors, n)
    assert rows.shape == (3, n)
    for k in range(3):
        row = module.local_energies_of_member(k, species, edges, vectors, n)
        torch.testing.assert_close(row, rows[k], rtol=0, atol=0)
    with pytest.raises(torch.jit.Error, match="no committee member 3"):
        module.local_energies_of_member(3, species, edges, vectors, n)
