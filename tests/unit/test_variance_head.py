"""Aleatoric head: the Gaussian NLL is minimised by the true variance; a model with the head trains, packages,
and the ASE calculator reports the packaged head's prediction, equal to the in-memory model's."""

import numpy as np
import pytest
import torch
import yaml

from mlmd.train.loss import energy_nll


def test_energy_nll_is_minimised_by_the_true_variance():
    rng = np.random.default_rng(0)
    n = torch.full((20000,), 10.0, dtype=torch.float64)
    ref = torch.zeros(20000, dtype=torch.float64)
    err = torch.as_tensor(rng.normal(0, 0.02, 20000)) * n  # per-atom error sd 0.02 eV
    values = {s: float(energy_nll(err, ref, (s * n) ** 2, n)) for s in (0.01, 0.02, 0.04)}
    assert values[0.02] < values[0.01] and values[0.02] < values[0.04]


def _config(tmp_path, data):
    cfg = {
        "data": {"path": str(data), "val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"r_cut": 4.0, "channels": 8, "vector_channels": 4, "l_max": 1, "n_layers": 1, "n_basis": 6,
                  "radial_hidden": 16, "dtype": "float64", "variance_head": True},
        "train": {"epochs": 3, "batch_size": 2, "lr": 0.01, "seed": 1},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_variance_head_trains_packages_and_reports(tmp_path, emt_data):
    from mlmd.config import load_config
    from mlmd.deploy.export import package_checkpoint
    from mlmd.engines.ase import MLMDCalculator
    from mlmd.model.checkpoint import load_checkpoint_model
    from mlmd.train.trainer import Trainer

    cfg = load_config(_config(tmp_path, emt_data))
    tr = Trainer(cfg, progress=False)
    assert tr.variance_head
    tr.train()
    package_checkpoint(tmp_path / "run" / "checkpoint_best.pt", tmp_path / "m.pt")
    model = load_checkpoint_model(tmp_path / "run" / "checkpoint_best.pt")
    from mlmd.data.graph import GraphCache, collate
    from mlmd.data.structures import read_structures
    from mlmd.model.properties import edge_vectors
    from mlmd.train.dataset import z_to_species_table

    s = read_structures(emt_data)[0]
    atoms = s.to_atoms()
    calc = MLMDCalculator(tmp_path / "m.pt")
    atoms.calc = calc
    e = atoms.get_potential_energy()
    assert "energy_std_aleatoric" in calc.implemented_properties
    assert calc.card.has_variances and "atomic_variances" in calc.card.entry_points  # written at export
    # the same from the in-memory potential on the training code's own graph
    g = GraphCache([s], model.r_cut)
    b = collate([s], [g.edges[0]], z_to_species_table(model.atomic_numbers), torch.float64)
    vec = edge_vectors(b["positions"], b["cell"], b["edge_index"], b["edge_shifts"], b["batch"])
    energies, var = model.energies_and_variances(b["species"], b["edge_index"], vec)
    assert float(energies.sum()) == pytest.approx(e, abs=1e-9)
    assert calc.results["energy_std_aleatoric"] == pytest.approx(float(var.sum().sqrt()), rel=1e-9)
    assert calc.results["energy_std_aleatoric"] > 0


def test_evaluate_reports_aleatoric_calibration(tmp_path, emt_data):
    from mlmd.cli import main
    from mlmd.evaluate import evaluate_model_file

    assert main(["train", str(_config(tmp_path, emt_data)), "--no-progress", "--set", "train.epochs=1"]) == 0
    assert main(["package", str(tmp_path / "run"), "-o", str(tmp_path / "m.pt"), "--no-validate"]) == 0
    res = evaluate_model_file(tmp_path / "m.pt", emt_data)
    assert 0 <= res["calibration_aleatoric_energy_miscalibration_area"] <= 1
    assert res["calibration_aleatoric_energy_mean_sigma"] > 0
