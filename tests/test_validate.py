"""`mlmd validate`: passes on a packaged model, fails (exit 1) when an engine runs a different model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import mlmd.validate as V
from conftest import make_potential
from mlmd import keys as K
from mlmd.cli import main
from mlmd.deploy.card import ElectrostaticsCard, LongRange, ModelCard
from mlmd.deploy.export import package

pytestmark = [pytest.mark.lammps, pytest.mark.openmm]


def test_validate_passes(model_files, capsys):
    assert main(["validate", str(model_files["float64"])]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out
    for engine in ("openmm", "lammps 1 rank", "lammps 2 ranks"):
        for structure in ("water box 27 molecules", "water box 64 molecules", "water cluster 8 molecules"):
            assert any(line.startswith(engine) and structure in line and line.endswith(" ok")
                       for line in out.splitlines()), (engine, structure)


def test_validate_fails_when_an_engine_differs(model_files, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other.pt"
    package(make_potential(seed=1), other)  # same architecture and elements, other weights
    real = V.run_lammps
    monkeypatch.setattr(V, "run_lammps", lambda atoms, model, nprocs=1: real(atoms, other, nprocs))
    assert main(["validate", str(model_files["float64"]), "--engines", "lammps", "--nprocs", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and out.count(" FAIL") == 3


def test_tolerances_follow_dtype_and_long_range(model_files):
    from mlmd.engines.lammps import model_card

    t64, t32 = (V.tolerances(model_card(model_files[k])) for k in ("float64", "float32"))
    assert t64.energy == 1e-9 and t32.energy == 1e-5 and t64.forces_abs == 0.0
    elec = ElectrostaticsCard(K.CHARGES_FIXED, charges={1: 0.4, 8: -0.8}, accuracy=1e-6)
    card = replace(model_card(model_files["float64"]), long_range=LongRange(elec), charges_mode=K.CHARGES_FIXED)
    assert V.tolerances(card.validate()).forces_abs == pytest.approx(1.44e-4, rel=1e-3)


def test_random_configurations_for_other_elements():
    card = ModelCard(elements=["Al", "Cu"], atomic_numbers=[13, 29], r_cut=4.0, n_layers=2, dtype="float64")
    confs = V.configurations(card.validate(), seed=3)
    assert [bool(a.pbc.all()) for _, a in confs] == [True, True, False]
    for _, atoms in confs:
        assert set(atoms.numbers) == {13, 29}
        d = atoms.get_all_distances(mic=bool(atoms.pbc.all()))
        assert d[np.triu_indices(len(atoms), 1)].min() >= 1.5
    assert min(confs[0][1].cell.lengths()) >= 2 * card.r_cut
