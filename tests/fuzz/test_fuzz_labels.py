"""Fuzzed label values (hypothesis): extxyz files of several frames whose energy / forces / stress (as such or as
REF_*) hold finite, subnormal, huge, NaN, infinite or text values. The reader accepts exactly when every label
value is a finite number, else a DataError names the file, the frame and the key; what it accepts trains one epoch
with a finite loss; `mlmd package` refuses a checkpoint whose weights were edited to hold NaN or infinity, naming
the tensor."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from mlmd.data.structures import DataError, read_structures

N_EXAMPLES = int(os.environ.get("MLMD_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# one water molecule in a 6 Å box: the labels are what is fuzzed
WATER = [("O", (0.0, 0.0, 0.0)), ("H", (0.96, 0.0, 0.0)), ("H", (-0.24, 0.93, 0.0))]
TEXT = ["abc", "T", "F", "1.0.0", "--1", "1e", "0x10", "1e400", "-1e400", "infinity", "+nan"]
# a label value as written in the file: finite (subnormal and huge included), NaN, +-inf, or text
VALUE = st.one_of(
    st.floats(-50.0, 50.0).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["5e-324", "-2.2e-308", "1.7976931348623157e308", "-0.0", "nan", "inf", "-inf"]),
    st.sampled_from(TEXT),
)


def is_finite_number(token: str) -> bool:
    try:
        return math.isfinite(float(token))
    except ValueError:
        return False


@st.composite
def labelled_file(draw, values=VALUE, train: bool = False):
    """(extxyz text, the (frame, key) pairs that hold a value that is not a finite number, keys used). train: every
    frame has an energy and forces (what the trainer's default loss weights need)."""
    prefix = draw(st.sampled_from(["", "REF_"]))
    keys = {label: prefix + label for label in ("energy", "forces", "stress")}
    has = {label: train and label != "stress" or draw(st.booleans()) for label in keys}
    frames, bad = [], set()
    for k in range(draw(st.integers(1, 3))):
        info = ['Lattice="6.0 0.0 0.0 0.0 6.0 0.0 0.0 0.0 6.0"', 'pbc="T T T"']
        if has["energy"] and (train or draw(st.integers(0, 4))):  # sometimes a frame without it
            e = draw(values)
            info.append(f"{keys['energy']}={e}")
            bad |= set() if is_finite_number(e) else {(k, keys["energy"])}
        if has["stress"] and draw(st.integers(0, 4)):
            s = [draw(values) for _ in range(9)]
            info.append(f'{keys["stress"]}="{" ".join(s)}"')
            bad |= set() if all(map(is_finite_number, s)) else {(k, keys["stress"])}
        props = "species:S:1:pos:R:3" + (f":{keys['forces']}:R:3" if has["forces"] else "")
        lines = [str(len(WATER)), f"Properties={props} " + " ".join(info)]
        for symbol, pos in WATER:
            row = [symbol, *(f"{x:.4f}" for x in pos)]
            if has["forces"]:
                f = [draw(values) for _ in range(3)]
                row += f
                bad |= set() if all(map(is_finite_number, f)) else {(k, keys["forces"])}
            lines.append(" ".join(row))
        frames.append("\n".join(lines) + "\n")
    return "".join(frames), bad, {label: keys[label] if has[label] else None for label in keys}


@FUZZ
@given(labelled_file())
def test_label_values_accepted_exactly_when_finite(tmp_path, drawn):
    text, bad, keys = drawn
    path = tmp_path / "labels.xyz"
    path.write_text(text)
    found: dict = {}
    try:
        structures = read_structures(path, keys_out=found)
    except DataError as err:
        msg = str(err)
        assert bad, (text, msg)  # refused: some value was not a finite number
        assert str(path) in msg, msg
        assert any(f"frame {k}" in msg and f"'{key}'" in msg for k, key in bad), (bad, msg)
        return
    assert not bad, (text, bad)
    for s in structures:  # accepted: every label finite, and read from the key the file uses
        for value in (s.energy, s.forces, s.stress):
            assert value is None or np.isfinite(value).all()
    for label, key in keys.items():
        present = any(getattr(s, label) is not None for s in structures)
        assert found[label] == (key if present else None), (found, keys)


# --------------------------------------------------------------------------- what the reader accepts trains

FINITE = st.one_of(st.floats(-50.0, 50.0).map(repr), st.sampled_from(["5e-324", "-0.0", "1e-300", "0.0"]),
                   st.floats(-1e300, 1e300).map(repr), st.sampled_from(["1e300", "-1.7e308", "3e38", "1e20"]))


def _config(tmp_path, data, dtype: str) -> dict:
    return {
        "data": {"path": str(data), "val_fraction": 0.25, "test_fraction": 0.0},
        "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                  "radial_hidden": 8, "dtype": dtype},
        "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "forces_weight": 1.0, "stress_weight": 1.0, "seed": 1},
        "output_dir": str(tmp_path / "run"),
    }


@settings(max_examples=max(N_EXAMPLES // 20, 3), deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=labelled_file(FINITE, train=True), more=labelled_file(FINITE, train=True),
       dtype=st.sampled_from(["float32", "float64"]))
def test_accepted_labels_train_with_a_finite_loss(tmp_path, drawn, more, dtype):
    """Four frames of finite labels (huge ones too): one epoch gives a finite training and validation loss, or the
    trainer refuses before any step with a TrainingError naming the frame and the label it cannot square in the
    training dtype. Either way no checkpoint holds non-finite weights."""
    from mlmd.config import load_config
    from mlmd.model.checkpoint import CHECKPOINT_BEST, load_checkpoint_model
    from mlmd.train.dataset import TrainingError
    from mlmd.train.trainer import Trainer

    text = drawn[0] + more[0] if drawn[2] == more[2] else drawn[0] + drawn[0]
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example (tmp_path is the test's)
    path = tmp_path / "d.xyz"
    path.write_text(text * 2)  # at least 2 frames: one for validation
    structures = read_structures(path)
    cfg_path = tmp_path / "config.yaml"
    cfg = _config(tmp_path, path, dtype)
    cfg["train"]["stress_weight"] = 1.0 if any(s.stress is not None for s in structures) else 0.0
    cfg_path.write_text(yaml.safe_dump(cfg))
    cfg = load_config(cfg_path)
    event("a label above 1e15" if any(  # --hypothesis-show-statistics: both kinds are drawn
        max(np.abs(v).max() for v in (s.energy, s.forces, s.stress) if v is not None) > 1e15 for s in structures)
        else "labels up to 1e15")
    try:
        trainer = Trainer(cfg, progress=False)
        trainer.train()
    except TrainingError as err:
        msg = str(err)
        assert "frame " in msg and str(path) in msg, msg
        assert not (tmp_path / "run" / CHECKPOINT_BEST).exists(), msg
        limit = math.sqrt(torch.finfo(getattr(torch, dtype)).max)
        if "frame " in msg:  # the refusal of a label too large for the dtype: such a label is there
            big = [abs(s.energy or 0.0) / s.n_atoms for s in structures] + [
                np.abs(a).max() for s in structures for a in (s.forces, s.stress) if a is not None]
            assert max(big) > limit * 1e-6, (msg, max(big))
        return
    row = trainer.history[-1]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]), row
    model = load_checkpoint_model(tmp_path / "run" / CHECKPOINT_BEST)  # refuses non-finite weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- `mlmd package` and NaN weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple:
    """A real training checkpoint (one epoch on four labelled water frames, tiny model) and the names of its trained
    tensors (those mlmd.model.checkpoint.non_finite_weights looks at)."""
    from mlmd.config import load_config
    from mlmd.model.checkpoint import CHECKPOINT_BEST, potential_from_hparams
    from mlmd.train.trainer import Trainer

    d = tmp_path_factory.mktemp("ckpt")
    frame = ['3', 'Lattice="6 0 0 0 6 0 0 0 6" pbc="T T T" Properties=species:S:1:pos:R:3:forces:R:3 energy=-14.2']
    frame += [f"{s} {x} {y} {z} {0.1 * k} -0.2 0.05" for k, (s, (x, y, z)) in enumerate(WATER)]
    (d / "d.xyz").write_text("\n".join(frame * 4) + "\n")
    cfg = _config(d, d / "d.xyz", "float32")
    cfg["train"].update(stress_weight=0.0)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    Trainer(load_config(d / "config.yaml"), progress=False).train()
    path = d / "run" / CHECKPOINT_BEST
    model = potential_from_hparams(torch.load(path, weights_only=True)["hparams"])
    trained = [k for k, _ in model.named_parameters()] + [
        k for k, _ in model.named_buffers() if k.rsplit(".", 1)[-1] in ("shifts", "scale", "charge_offsets")]
    return path, sorted(trained)


# each example builds the potential (seconds): a few tensors per run, others on the next run (CI: the same few)
@settings(max_examples=max(N_EXAMPLES // 20, 3), deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_package_refuses_non_finite_weights(tmp_path, checkpoint, capsys, data):
    from mlmd.cli import main

    path, trained = checkpoint
    state = torch.load(path, weights_only=True)
    names = [k for k in trained if state["model_state"][k].is_floating_point() and state["model_state"][k].numel()]
    name = data.draw(st.sampled_from(names))
    tensor = state["model_state"][name].clone().reshape(-1)
    k = data.draw(st.integers(0, tensor.numel() - 1))
    tensor[k] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    state["model_state"][name] = tensor.reshape(state["model_state"][name].shape)
    bad = tmp_path / "edited.pt"
    torch.save(state, bad)
    out = tmp_path / "model.pt"
    capsys.readouterr()
    assert main(["package", str(bad), "-o", str(out), "--no-validate"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and f"({name})" in err and str(bad) in err, (name, err)
    assert not out.exists()
