"""Labels: non-finite values refused at read time, common label names detected, missing labels refused before
training; a diverging training stops without a checkpoint; non-finite weights are never packaged."""

from __future__ import annotations

import math

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from mlmd.config import load_config
from mlmd.data.structures import DataError, read_structures
from mlmd.model.checkpoint import CHECKPOINT_BEST, CHECKPOINT_LAST
from mlmd.train.dataset import TrainingError
from mlmd.train.metrics import ErrorAccumulator
from mlmd.train.trainer import Trainer


def _frames(n=3, prefix="", stress=True):
    """Periodic Cu cells with labels stored under info/arrays names `prefix`energy etc. (not a calculator)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.info[prefix + "energy"] = float(rng.normal(-10, 0.1))
        a.arrays[prefix + "forces"] = rng.normal(0, 0.3, (len(a), 3))
        if stress:
            a.info[prefix + "stress"] = rng.normal(0, 0.01, 6)
        out.append(a)
    return out


@pytest.mark.parametrize("label", ["energy", "forces", "stress"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_label_is_refused_naming_frame_and_key(tmp_path, label, bad):
    frames = _frames(3, prefix="REF_")
    if label == "forces":
        frames[2].arrays["REF_forces"][1, 0] = bad
    else:
        value = np.array(frames[2].info[f"REF_{label}"], dtype=float)
        value.reshape(-1)[0] = bad
        frames[2].info[f"REF_{label}"] = value if label == "stress" else float(value)
    path = tmp_path / "d.xyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=rf"frame 2: {label} 'REF_{label}' .*(NaN|finite)"):
        read_structures(path)


def test_non_finite_label_from_a_calculator_is_refused(tmp_path):
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.calc = SinglePointCalculator(a, energy=-3.0, forces=np.zeros((4, 3)), stress=np.array([0, 0, np.nan, 0, 0, 0]))
    ase.io.write(tmp_path / "d.xyz", [a.copy(), a])  # frame 0 has no labels, frame 1 a NaN stress
    with pytest.raises(DataError, match="frame 1: stress 'stress'"):
        read_structures(tmp_path / "d.xyz")


@pytest.mark.parametrize("prefix", ["", "REF_", "DFT_"])
def test_common_label_names_are_detected(tmp_path, prefix):
    frames = _frames(2, prefix=prefix)
    ase.io.write(tmp_path / "d.xyz", frames)
    keys: dict = {}
    s = read_structures(tmp_path / "d.xyz", keys_out=keys)
    assert keys == {"energy": prefix + "energy", "forces": prefix + "forces", "stress": prefix + "stress"}
    assert s[1].energy == pytest.approx(frames[1].info[prefix + "energy"])
    np.testing.assert_allclose(s[1].forces, frames[1].arrays[prefix + "forces"])
    assert s[1].stress is not None


def test_calculator_results_are_detected(tmp_path):
    a = molecule("H2O")
    a.calc = SinglePointCalculator(a, energy=-5.0, forces=np.ones((3, 3)))
    keys: dict = {}
    s = read_structures_from(a, tmp_path, keys)
    assert keys["energy"] == "energy" and keys["forces"] == "forces" and keys["stress"] is None
    assert s.energy == -5.0 and s.forces.sum() == 9


def read_structures_from(atoms, tmp_path, keys):
    ase.io.write(tmp_path / "c.xyz", atoms)
    return read_structures(tmp_path / "c.xyz", keys_out=keys)[0]


def test_two_energy_labels_are_ambiguous(tmp_path):
    frames = _frames(2, prefix="REF_")
    for a in frames:
        a.info["DFT_energy"] = 1.0
    ase.io.write(tmp_path / "d.xyz", frames)
    with pytest.raises(DataError, match=r"several energy labels \(REF_energy, DFT_energy\).*data.energy_key"):
        read_structures(tmp_path / "d.xyz")
    s = read_structures(tmp_path / "d.xyz", energy_key="DFT_energy")
    assert s[0].energy == 1.0


def test_explicit_key_missing_is_refused_naming_the_keys_found(tmp_path):
    ase.io.write(tmp_path / "d.xyz", _frames(2, prefix="REF_"))
    with pytest.raises(DataError, match=r"no frame has the forces label 'forces'.*REF_forces"):
        read_structures(tmp_path / "d.xyz", forces_key="forces")


def _config(tmp_path, data, **train):
    cfg = {
        "data": {"path": str(data), "val_fraction": 0.2, "test_fraction": 0.0},
        "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                  "radial_hidden": 8, "dtype": train.pop("dtype", "float64")},
        "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "seed": 1, **train},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_missing_forces_refused_before_training(tmp_path):
    frames = _frames(5, prefix="REF_")
    for a in frames:
        del a.arrays["REF_forces"]
        a.arrays["my_F"] = np.zeros((len(a), 3))
    ase.io.write(tmp_path / "d.xyz", frames)
    with pytest.raises(TrainingError, match=r"no forces labels, but train.forces_weight is 1.*my_F.*data.forces_key"):
        Trainer(_config(tmp_path, tmp_path / "d.xyz"), progress=False)
    assert not (tmp_path / "run" / CHECKPOINT_LAST).exists()
    # named, it trains; and with forces_weight 0 the energies alone are enough
    cfg = _config(tmp_path, tmp_path / "d.xyz", forces_weight=0.0)
    assert Trainer(cfg, progress=False).label_keys["forces"] is None
    cfg.data.forces_key = "my_F"
    assert Trainer(cfg, progress=False).label_keys == {"energy": "REF_energy", "forces": "my_F", "stress": "REF_stress"}


def test_missing_energy_refused_before_training(tmp_path):
    frames = _frames(5)
    for a in frames:
        a.info["E_total"] = a.info.pop("energy")
    ase.io.write(tmp_path / "d.xyz", frames)
    with pytest.raises(TrainingError, match=r"no energy labels.*E_total.*train.energy_weight=0"):
        Trainer(_config(tmp_path, tmp_path / "d.xyz"), progress=False)


def test_diverging_training_stops_without_checkpoint(tmp_path):
    """lr 1e30 in float32: the second step's loss overflows. Training stops with the cause, and writes neither
    checkpoint (no NaN model to package)."""
    ase.io.write(tmp_path / "d.xyz", _frames(8))
    tr = Trainer(_config(tmp_path, tmp_path / "d.xyz", lr=1e30, batch_size=1, dtype="float32"), progress=False)
    with pytest.raises(TrainingError, match=r"training loss is (nan|inf) at epoch 1, batch \d.*no checkpoint"):
        tr.train()
    assert not (tmp_path / "run" / CHECKPOINT_BEST).exists() and not (tmp_path / "run" / CHECKPOINT_LAST).exists()
    assert all(bool(torch.isfinite(p).all()) for p in tr.model.parameters())  # the bad step was never taken


def test_non_finite_validation_loss_stops_without_checkpoint(tmp_path, monkeypatch):
    import mlmd.train.trainer as T

    ase.io.write(tmp_path / "d.xyz", _frames(5))
    tr = Trainer(_config(tmp_path, tmp_path / "d.xyz"), progress=False)
    real = T.evaluate_dataset

    def nan_model(model, data, *args, **kw):  # as if the EMA model gave NaN forces on the validation set
        res = real(model, data, *args, **kw)
        res["forces_rmse"] = res["forces_mae"] = math.nan
        return res

    monkeypatch.setattr(T, "evaluate_dataset", nan_model)
    with pytest.raises(TrainingError, match="validation loss is nan after epoch 1"):
        tr.train()
    assert not (tmp_path / "run" / CHECKPOINT_BEST).exists() and not (tmp_path / "run" / CHECKPOINT_LAST).exists()


def test_metric_accumulator_keeps_non_finite_errors():
    acc = ErrorAccumulator()
    acc.add("forces", torch.tensor([0.1, math.nan, 0.2]))
    assert math.isnan(acc.results()["forces_mae"])
    batch = {"n_atoms": torch.tensor([2, 2]), "energy": torch.tensor([1.0, math.nan]),
             "has_forces": torch.zeros(4, dtype=torch.bool), "forces": torch.zeros(4, 3)}
    acc = ErrorAccumulator()  # a missing energy label (NaN in the batch) is skipped, not counted as an error
    acc.add_batch({"energy": torch.tensor([1.5, 7.0])}, batch)
    assert acc.results()["energy_per_atom_mae"] == pytest.approx(250.0)
    acc = ErrorAccumulator()  # a model that gives NaN on a labelled structure shows as NaN
    acc.add_batch({"energy": torch.tensor([math.nan, 7.0])}, batch)
    assert math.isnan(acc.results()["energy_per_atom_mae"])


def test_package_refuses_non_finite_weights(tmp_path):
    from mlmd.cli import main
    from mlmd.deploy.export import package

    ase.io.write(tmp_path / "d.xyz", _frames(5))
    tr = Trainer(_config(tmp_path, tmp_path / "d.xyz"), progress=False)
    tr.train()
    ckpt = tmp_path / "run" / CHECKPOINT_BEST
    st = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in st["model_state"].items() if v.is_floating_point() and v.numel() > 1 and "shift" not in k)
    st["model_state"][name].view(-1)[0] = math.nan
    bad = tmp_path / "nan.pt"
    torch.save(st, bad)
    out = tmp_path / "m.pt"
    assert main(["package", str(bad), "-o", str(out), "--no-validate"]) == 2
    assert not out.exists()
    # a model file whose weights are NaN (packaged before this check) is not repackaged either
    from mlmd.model.checkpoint import load_checkpoint_model

    good = load_checkpoint_model(ckpt)
    with torch.no_grad():
        next(good.parameters()).view(-1)[0] = math.inf
    package(good, tmp_path / "inf.pt")
    assert main(["package", str(tmp_path / "inf.pt"), "-o", str(out), "--no-validate"]) == 2
    assert not out.exists()


def test_charges_weight_needs_charge_labels(tmp_path):
    ase.io.write(tmp_path / "d.xyz", _frames(5))
    with pytest.raises(TrainingError, match=r"no charges labels, but train.charges_weight is 1.*data.charges_key"):
        Trainer(_config(tmp_path, tmp_path / "d.xyz", charges_weight=1.0), progress=False)


# found by tests/fuzz/test_fuzz_labels.py
HEAD = 'Lattice="6 0 0 0 6 0 0 0 6" pbc="T T T"'


def _xyz(path, frames: list[tuple[str, str]]) -> None:
    """extxyz of water molecules: per frame (info text, the forces column's first value)."""
    text = ""
    for info, f0 in frames:
        text += f"3\n{HEAD} Properties=species:S:1:pos:R:3:REF_forces:R:3 {info}\n"
        text += f"O 0 0 0 {f0} 0 0\nH 0.96 0 0 0 0 0\nH -0.24 0.93 0 0 0 0\n"
    path.write_text(text)


@pytest.mark.parametrize("value", ["T", "F", "abc"])
def test_logical_or_text_energy_is_refused(tmp_path, value):
    """energy=T was read as 1.0 (float(True)); text was already refused."""
    _xyz(tmp_path / "d.xyz", [("REF_energy=-1.0", "0.1"), (f"REF_energy={value}", "0.1")])
    with pytest.raises(DataError, match=r"frame 1: energy 'REF_energy' is not a number"):
        read_structures(tmp_path / "d.xyz")


def test_unreadable_value_names_the_frame_and_property(tmp_path):
    """ASE's own parse errors ("could not convert string to float") named neither the frame nor the column."""
    _xyz(tmp_path / "d.xyz", [("REF_energy=-1.0", "0.1"), ("REF_energy=-1.0", "0.1"), ("REF_energy=-1.0", "abc")])
    with pytest.raises(DataError, match=r"d\.xyz frame 2, property 'REF_forces': malformed"):
        read_structures(tmp_path / "d.xyz")
    _xyz(tmp_path / "e.xyz", [("REF_energy=-1.0", "0.1"), ('stress="1 0 0 0 1 0 0 0 x"', "0.1")])
    with pytest.raises(DataError, match=r"e\.xyz frame 1, property 'stress': malformed"):
        read_structures(tmp_path / "e.xyz")


def test_label_too_large_for_the_training_dtype_is_refused_before_training(tmp_path):
    """1e20 eV/Å is a finite number the reader takes, but its squared error is inf in float32: the first step
    stopped with 'training loss is inf' and no pointer to the data."""
    _xyz(tmp_path / "d.xyz", [("REF_energy=-1.0", "0.1"), ("REF_energy=-1.0", "1e20")] * 2)
    cfg = {"data": {"path": str(tmp_path / "d.xyz"), "val_fraction": 0.25, "test_fraction": 0.0},
           "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                     "radial_hidden": 8, "dtype": "float32"},
           "train": {"epochs": 1, "batch_size": 2, "stress_weight": 0.0}, "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(TrainingError, match=r"frame 1: forces 'REF_forces' holds 1e\+20, too large for training in "
                                            r"float32"):
        Trainer(load_config(tmp_path / "c.yaml"), progress=False)
    assert not (tmp_path / "run" / CHECKPOINT_BEST).exists()
