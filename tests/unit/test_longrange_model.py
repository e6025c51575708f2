"""The composed model E = E_short + E_elec + E_disp: packaging, engines' whole-system entry, training."""

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms

from conftest import REPO, make_potential, water_box
from mlmd.deploy.export import package
from mlmd.deploy.load import load_model
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.dispersion import D3Dispersion
from mlmd.model.electrostatics import Electrostatics
from mlmd.model.longrange import CoulombTerm, DispersionTerm

CHARGES = {8: -0.8, 1: 0.4}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    d = tmp_path_factory.mktemp("hybrid")
    short, full = d / "short.pt", d / "full.pt"
    package(make_potential(seed=3), short)
    terms = [CoulombTerm(CHARGES, accuracy=1e-6), DispersionTerm(atomic_numbers=[1, 8], functional="gfn2",
                                                                 cutoff=12.0, cutoff_cn=12.0)]
    package(make_potential(seed=3), full, long_range=terms)
    return short, full


def _energy(atoms, path):
    atoms = atoms.copy()
    atoms.calc = MLMDCalculator(path)
    return atoms.get_potential_energy()


@pytest.mark.parametrize("periodic", [True, False])
def test_energy_is_sum_of_independent_terms(hybrid, periodic):
    short, full = hybrid
    a = water_box(2, 21)
    if not periodic:
        a = Atoms(a.numbers, positions=a.positions)
    pos = torch.tensor(a.positions)
    cell = torch.tensor(a.cell.array)
    pbc = torch.tensor(a.pbc)
    q = torch.tensor([CHARGES[z] for z in a.numbers], dtype=torch.float64)
    e_elec = float(Electrostatics(accuracy=1e-6).double()(pos, cell, pbc, q))
    e_disp = float(D3Dispersion([1, 8], "gfn2", cutoff=12.0, cutoff_cn=12.0).double()(pos, cell,
                                                                                          torch.tensor(a.numbers), pbc))
    assert abs(e_elec) > 1.0 and abs(e_disp) > 1e-3
    total = _energy(a, full)
    assert abs(total - (_energy(a, short) + e_elec + e_disp)) < 1e-9 * abs(total)


def test_hybrid_forces_and_stress_match_finite_differences(hybrid):
    _, full = hybrid
    a = water_box(2, 22)
    a.calc = MLMDCalculator(full)
    f = a.get_forces()
    s = a.get_stress(voigt=False)
    h = 1e-4
    for atom, axis in [(0, 0), (3, 1), (11, 2)]:
        p, m = a.copy(), a.copy()
        p.positions[atom, axis] += h
        m.positions[atom, axis] -= h
        fd = -(_energy(p, full) - _energy(m, full)) / (2 * h)
        assert abs(fd - f[atom, axis]) < 1e-6 * max(1.0, abs(fd))
    vol = a.get_volume()
    for i, j in [(0, 0), (1, 2)]:
        eps = np.zeros((3, 3))
        eps[i, j] += 0.5e-5  # symmetric strain of size h = 1e-5 (off-diagonal: h/2 in each of ij and ji)
        eps[j, i] += 0.5e-5
        es = []
        for sign in (1, -1):
            b = a.copy()
            b.set_cell(a.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            es.append(_energy(b, full))
        fd = (es[0] - es[1]) / 2e-5 / vol
        assert abs(fd - s[i, j]) < 1e-7 + 1e-5 * abs(fd)


def test_metadata_records_long_range(hybrid):
    _, full = hybrid
    m, card = load_model(full)
    el = card.long_range.electrostatics.to_json()
    assert card.charges_mode == "fixed" and el["charges"] == {"8": -0.8, "1": 0.4}
    assert card.fixed_charges == {8: -0.8, 1: 0.4} and card.has_charges and not card.predicts_charges
    for key in ("method", "smearing", "r_cut", "accuracy"):
        assert key in el
    assert card.long_range.dispersion.kind == "d3bj"
    assert el["units"] == {"length": "angstrom", "energy": "eV", "charge": "e"}  # one spelling, as the card's
    assert m.has_long_range


def test_training_subtracts_long_range_and_packages_it(tmp_path):
    import ase.io

    from mlmd.config import load_config
    from mlmd.deploy.export import package_checkpoint
    from mlmd.train.trainer import Trainer

    frames = ase.io.read(REPO / "inputs" / "water" / "water_gfn2.xyz", "-8:")
    ase.io.write(tmp_path / "w.xyz", frames)
    cfg = {
        "data": {"path": str(tmp_path / "w.xyz"), "val_fraction": 0.25, "test_fraction": 0.0},
        "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                  "radial_hidden": 8, "dtype": "float64",
                  "long_range": {"electrostatics": "fixed", "charges": "fit", "dispersion": "d3bj",
                                 "d3_cutoff": 8.0}},
        "train": {"epochs": 1, "batch_size": 2},
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    tr = Trainer(load_config(tmp_path / "c.yaml"), progress=False)
    q = tr.long_range_charges
    from mlmd.data.structures import read_structures

    structs = read_structures(tmp_path / "w.xyz")
    ref = np.concatenate([s.charges[s.numbers == 8] for s in structs]).mean()
    assert q[8] < -0.3 and abs(q[8] + 2 * q[1]) < 1e-12  # water: neutral per molecule
    assert abs(q[8] - ref) < 0.05
    tr.train()
    package_checkpoint(tmp_path / "run" / "checkpoint_best.pt", tmp_path / "m.pt")
    _, card = load_model(tmp_path / "m.pt")
    assert card.charges_mode == "fixed" and card.long_range.dispersion.cutoff == pytest.approx(8.0)
