"""Training: error goes down on a tiny set, checkpoints resume, CLI train -> package -> evaluate works."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO
from mlmd.config import ConfigError, load_config
from mlmd.data.structures import read_structures, split_indices
from mlmd.train.dataset import fit_energy_shift_scale
from mlmd.train.trainer import Trainer


def _config(tmp_path, data, **train):
    cfg = {
        "data": {"path": str(data), "val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"r_cut": 4.0, "channels": 8, "vector_channels": 4, "l_max": 1, "n_layers": 1, "n_basis": 6,
                  "radial_hidden": 16, "dtype": "float64"},
        "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "forces_weight": 10.0, "seed": 1, **train},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_training_reduces_validation_error(tmp_path, emt_data):
    cfg = load_config(_config(tmp_path, emt_data, epochs=12, ema_decay=0.9))
    tr = Trainer(cfg, progress=False)
    from mlmd.train.dataset import evaluate_dataset

    before = evaluate_dataset(tr.model, tr.val_data)
    res = tr.train()
    assert res["val"]["forces_mae"] < 0.7 * before["forces_mae"]
    assert res["val"]["energy_per_atom_mae"] < before["energy_per_atom_mae"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == tr.epoch and "val_forces_mae" in rows[0]
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["test"]["forces_mae"] > 0


def test_split_is_reproducible_and_disjoint():
    s1 = split_indices(100, 0.1, 0.2, seed=3)
    s2 = split_indices(100, 0.1, 0.2, seed=3)
    assert s1 == s2
    assert len(s1["test"]) == 20 and len(s1["val"]) == 10 and len(s1["train"]) == 70
    assert not set(s1["train"]) & set(s1["val"]) and not set(s1["train"]) & set(s1["test"])
    assert split_indices(100, 0.1, 0.2, seed=4) != s1


def test_energy_shift_fit_recovers_reference_energies():
    from mlmd.data.structures import Structure

    rng = np.random.default_rng(0)
    e_ref = {1: -13.6, 8: -432.0}
    structs = []
    for _ in range(6):
        n_h, n_o = rng.integers(1, 6), rng.integers(1, 4)
        numbers = np.array([1] * n_h + [8] * n_o)
        structs.append(Structure(numbers, np.zeros((len(numbers), 3)), np.zeros((3, 3)), np.zeros(3, bool),
                                 energy=n_h * e_ref[1] + n_o * e_ref[8], forces=np.full((len(numbers), 3), 0.5)))
    shifts, scale = fit_energy_shift_scale(structs, [1, 8])
    np.testing.assert_allclose(shifts, [-13.6, -432.0], atol=1e-6)
    assert abs(scale - 0.5) < 1e-12


def test_custom_property_keys(tmp_path):
    import ase.io
    from ase.build import molecule

    a = molecule("H2O")
    a.info["REF_energy"] = -5.5
    a.arrays["REF_forces"] = np.ones((3, 3))
    ase.io.write(tmp_path / "k.xyz", a)
    s = read_structures(tmp_path / "k.xyz", energy_key="REF_energy", forces_key="REF_forces")[0]
    assert s.energy == -5.5 and s.forces.sum() == 9 and not s.pbc.any()


@pytest.mark.parametrize(("text", "message"), [
    ("model: {r_cutt: 3}\n", "unknown config key 'model.r_cutt'"),
    ("train: {epochs: many}\n", "'train.epochs' must be int"),
    ("train: [1, 2\n", "not valid YAML"),
    ("model: {dtype: float16}\n", "float32 or float64"),
])
def test_config_errors(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_cli_train_package_evaluate(tmp_path, emt_data):
    cfg = _config(tmp_path, emt_data, epochs=1)
    run = lambda *args: subprocess.run([sys.executable, "-m", "mlmd.cli", *args], capture_output=True,  # noqa: E731
                                       text=True, cwd=REPO)
    r = run("train", str(cfg), "--no-progress", "--set", "train.epochs=2")
    assert r.returncode == 0, r.stderr
    assert "epoch    2" in r.stdout
    model = tmp_path / "m.pt"
    r = run("package", str(tmp_path / "run"), "-o", str(model))
    assert r.returncode == 0, r.stderr
    r = run("evaluate", str(model), str(emt_data), "--plot", str(tmp_path / "parity.png"), "--json",
            str(tmp_path / "ev.json"))
    assert r.returncode == 0, r.stderr
    assert "forces" in r.stdout and (tmp_path / "parity.png").stat().st_size > 1000
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["n_structures"] == 20 and ev["forces_mae"] > 0


def test_extra_training_frames_leave_the_split_alone(tmp_path, emt_data):
    """data.extra_train_path adds frames to the training set only: same validation/test frames, more training
    frames, and the model card's data checksum names both files."""
    import ase.io

    extra = tmp_path / "extra.xyz"
    ase.io.write(extra, ase.io.read(emt_data, ":3"))
    base = Trainer(load_config(_config(tmp_path, emt_data, epochs=1)), progress=False)
    plain = yaml.safe_load(_config(tmp_path, emt_data, epochs=1).read_text())
    plain["data"]["extra_train_path"] = "extra.xyz"  # relative to the config's folder
    plain["output_dir"] = str(tmp_path / "run_extra")
    (tmp_path / "config_extra.yaml").write_text(yaml.safe_dump(plain))
    more = Trainer(load_config(tmp_path / "config_extra.yaml"), progress=False)
    assert json.loads((tmp_path / "run" / "split.json").read_text()) == json.loads(
        (tmp_path / "run_extra" / "split.json").read_text())
    assert len(more.train_data) == len(base.train_data) + 3
    assert len(more.val_data) == len(base.val_data) and len(more.test_data) == len(base.test_data)
    assert more.data_sha256.startswith(base.data_sha256 + "+") and len(more.data_sha256) > len(base.data_sha256)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_gradient_norms_are_logged_and_clipped_before_each_step(tmp_path, emt_data, clip):
    """train.clip_grad_norm bounds the gradient the optimiser sees (0: no bound); metrics.csv logs the norms before
    clipping (median, largest, how many steps were clipped)."""
    import torch

    tr = Trainer(load_config(_config(tmp_path, emt_data, epochs=1, clip_grad_norm=clip)), progress=False)
    seen, step = [], tr.opt.step

    def recording_step(*args, **kwargs):
        seen.append(float(torch.cat([p.grad.reshape(-1) for p in tr.model.parameters() if p.grad is not None]).norm()))
        return step(*args, **kwargs)

    tr.opt.step = recording_step
    tr.train()
    row = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))[0]
    largest, clipped = float(row["grad_norm_max"]), int(row["grad_steps_clipped"])
    assert seen and float(row["grad_norm_median"]) <= largest
    if clip:
        assert clipped == len(seen) and largest > 100 * clip  # every step's norm was far above the bound
        assert max(seen) == pytest.approx(clip, rel=1e-6)
    else:
        assert clipped == 0 and max(seen) == pytest.approx(largest, rel=1e-9)
