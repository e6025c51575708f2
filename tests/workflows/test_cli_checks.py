"""A new user's mistakes get clear errors: config ranges, a previous run in the output folder, `mlmd md` options,
a training checkpoint where a model is expected, labels under other names in `mlmd evaluate`; and the ASE
energy is summed in float64."""

from __future__ import annotations

import dataclasses
import math

import ase.io
import numpy as np
import pytest
import torch
import yaml

from conftest import make_potential, water_box
from mlmd.cli import main
from mlmd.config import RANGES, Config, ConfigError, config_from_dict
from mlmd.model.checkpoint import CHECKPOINT_BEST
from mlmd.train.run_files import prepare_output_dir

# ------------------------------------------------------------------------------------------ config ranges


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += _numeric_fields(type(default), f"{prefix}{f.name}.")
        elif type(default) in (int, float):
            out.append(prefix + f.name)
    return out


def test_every_numeric_config_value_has_a_range():
    fields = _numeric_fields(Config)
    assert sorted(fields) == sorted(RANGES), set(fields) ^ set(RANGES)
    config_from_dict({})  # the defaults are in range


def _nested(dotted: str, value) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


@pytest.mark.parametrize("key,value,rule", [
    ("model.n_layers", 0, ">= 1"), ("train.batch_size", 0, ">= 1"), ("model.r_cut", -1.0, "> 0"),
    ("train.lr", 0.0, "> 0"), ("train.lr", math.nan, "> 0"), ("train.lr", math.inf, "> 0"),
    ("data.val_fraction", 1.0, "[0, 1)"), ("data.test_fraction", -0.1, "[0, 1)"), ("train.epochs", 0, ">= 1"),
    ("train.ema_decay", 1.0, "[0, 1)"), ("model.long_range.accuracy", 0.0, "(0, 1)"),
    ("model.bp.sigma", -0.5, "> 0"), ("train.forces_weight", -1.0, ">= 0"),
])
def test_out_of_range_config_value_names_key_value_and_range(key, value, rule):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_nested(key, value))
    msg = str(err.value)
    assert f"'{key}'" in msg and repr(float(value) if isinstance(value, float) else value) in msg and rule in msg


def test_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match="leaves no training data"):
        config_from_dict({"data": {"val_fraction": 0.5, "test_fraction": 0.5}})


def test_defaults_are_the_measured_recipe():
    """The defaults are inputs/water/train.yaml's recipe (benchmarks/SPEEDUPS.md), and the README says so."""
    from conftest import REPO

    tc = Config().train
    water = yaml.safe_load((REPO / "inputs" / "water" / "train.yaml").read_text())["train"]
    for key in ("batch_size", "lr", "energy_weight", "forces_weight", "stress_weight", "clip_grad_norm"):
        assert getattr(tc, key) == water[key], key
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Train on your data", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    train = yaml.safe_load(block)["train"]
    keys = ("batch_size", "lr", "energy_weight", "forces_weight", "stress_weight", "clip_grad_norm")
    assert {k: train[k] for k in keys} == {k: water[k] for k in keys}


# ----------------------------------------------------------------------------------- a previous run


def _fake_run(d):
    d.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "metrics.csv", "test_metrics.json",
                 "learning_curve.png", "split.json"):
        (d / name).write_text("old")
    (d / "member_0").mkdir()
    (d / "member_0" / "checkpoint_best.pt").write_text("old")
    (d / "notes.txt").write_text("mine")


def test_previous_run_is_refused_unless_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    prepare_output_dir(run)  # a new folder is fine
    prepare_output_dir(tmp_path)  # a folder of other files too
    _fake_run(run)
    with pytest.raises(ValueError, match=r"holds a finished training run .*--resume.*--overwrite"):
        prepare_output_dir(run)
    prepare_output_dir(run, resume=True)  # kept
    assert (run / "checkpoint_best.pt").is_file()
    with pytest.raises(ValueError, match="exclude each other"):
        prepare_output_dir(run, resume=True, overwrite=True)
    prepare_output_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # the run's files gone, the user's kept


def test_cli_train_refuses_a_finished_run(tmp_path, emt_data, capsys):
    cfg = {
        "data": {"path": str(emt_data), "val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                  "radial_hidden": 8, "dtype": "float64"},
        "train": {"epochs": 1, "seed": 1},
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _fake_run(tmp_path / "run")
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "finished training run" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "test_metrics.json").read_text() == "old"
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress", "--overwrite"]) == 0
    assert not (tmp_path / "run" / "member_0").exists()
    assert (tmp_path / "run" / "test_metrics.json").read_text() != "old"
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2  # now its own finished run


# ------------------------------------------------------------------------------------------- mlmd md


@pytest.fixture(scope="module")
def cu_model(tmp_path_factory):
    from mlmd.deploy.export import package

    path = tmp_path_factory.mktemp("cu") / "cu.pt"
    package(make_potential(atomic_numbers=(29,), dtype=torch.float32), path)
    return path


@pytest.mark.parametrize("args,match", [
    (["--steps", "-5"], "--steps -5 is invalid"), (["--steps", "0"], "--steps 0 is invalid"),
    (["--nprocs", "0"], "--nprocs 0 is invalid"), (["--timestep", "-1"], "--timestep -1.0 is invalid"),
    (["--temperature", "0"], "--temperature 0.0 is invalid"), (["--threads", "0"], "--threads 0 is invalid"),
    (["--replicate", "1", "0", "1"], "--replicate"), (["--log-every", "0"], "--log-every 0 is invalid"),
])
def test_md_options_are_checked(model_files, args, match, capsys):
    assert main(["md", str(model_files["float32"]), *args]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["ase", "lammps", "openmm"])
def test_md_unknown_structure_type(model_files, tmp_path, engine, capsys):
    bad = tmp_path / "start.foo"
    bad.write_text("whatever\n")
    assert main(["md", str(model_files["float32"]), "--engine", engine, "--structure", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown structure file type" in err and "extxyz" in err and "cif" in err


@pytest.mark.parametrize("engine", ["ase", "lammps", "openmm"])
def test_md_no_water_default_for_other_elements(cu_model, engine, capsys):
    assert main(["md", str(cu_model), "--engine", engine, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "model" in err and "Cu" in err and "--structure" in err


def test_md_with_structure_runs_for_other_elements(cu_model, tmp_path):
    from ase.build import bulk

    from mlmd.md import run_md

    ase.io.write(tmp_path / "cu.xyz", bulk("Cu", "fcc", a=3.6, cubic=True))
    out = run_md(cu_model, structure=tmp_path / "cu.xyz", steps=2, log_every=1)
    assert np.isfinite(out["temperature"])


@pytest.mark.lammps
def test_md_lammps_log_beside_the_trajectory(model_files, tmp_path, monkeypatch):
    from mlmd.md import run_md

    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    water_box(2, seed=3).write(tmp_path / "w.xyz")
    run_md(model_files["float32"], engine="lammps", structure=tmp_path / "w.xyz", steps=2, log_every=1,
           trajectory=out / "traj.dump")
    assert (out / "log.lammps").is_file() and not (cwd / "log.lammps").exists()
    run_md(model_files["float32"], engine="lammps", structure=tmp_path / "w.xyz", steps=2, log_every=1,
           output_dir=tmp_path / "logs")
    assert (tmp_path / "logs" / "log.lammps").is_file() and not (cwd / "log.lammps").exists()


# ------------------------------------------------------------------- a checkpoint where a model is expected


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, emt_data):
    from mlmd.config import load_config
    from mlmd.train.trainer import Trainer

    d = tmp_path_factory.mktemp("ckpt")
    cfg = {
        "data": {"path": str(emt_data), "val_fraction": 0.2, "test_fraction": 0.0},
        "model": {"r_cut": 3.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                  "radial_hidden": 8, "dtype": "float64"},
        "train": {"epochs": 1, "batch_size": 4, "seed": 1},
        "output_dir": str(d / "run"),
    }
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    Trainer(load_config(d / "c.yaml"), progress=False).train()
    return d / "run" / CHECKPOINT_BEST


def _says_checkpoint(msg: str, path) -> None:
    assert "training checkpoint" in msg or "training output folder" in msg, msg
    assert f"mlmd package {path} -o model.pt" in msg, msg
    assert "constants.pkl" not in msg


def test_checkpoint_given_to_the_loaders(checkpoint):
    from mlmd.deploy.load import ModelFileError, load_model
    from mlmd.engines.ase import MLMDCalculator

    for path in (checkpoint, checkpoint.parent):  # the checkpoint, and the training folder
        with pytest.raises(ModelFileError) as err:
            load_model(path)
        _says_checkpoint(str(err.value), path)
        with pytest.raises(ModelFileError) as err:
            MLMDCalculator(path)
        _says_checkpoint(str(err.value), path)


@pytest.mark.parametrize("command", [["info"], ["md", "--steps", "1"], ["md", "--engine", "lammps", "--steps", "1"],
                                     ["evaluate"]])
def test_checkpoint_given_to_the_cli(checkpoint, emt_data, command, capsys):
    args = [command[0], str(checkpoint), *command[1:]]
    if command[0] == "md":
        args += ["--structure", str(emt_data)]
    if command[0] == "evaluate":
        args.insert(2, str(emt_data))
    assert main(args) == 2
    _says_checkpoint(capsys.readouterr().err, checkpoint)


@pytest.mark.openmm
def test_checkpoint_given_to_openmm(checkpoint):
    pytest.importorskip("openmmml")
    from mlmd.deploy.load import ModelFileError
    from mlmd.engines.openmm import MLMDPotential

    with pytest.raises(ModelFileError) as err:
        MLMDPotential(checkpoint)
    _says_checkpoint(str(err.value), checkpoint)


# ------------------------------------------------------------------------------------ mlmd evaluate labels


def test_evaluate_detects_ref_labels_and_refuses_none(model_files, tmp_path, capsys):

    from mlmd.engines.ase import MLMDCalculator

    frames = [water_box(1, seed=k) for k in range(3)]
    calc = MLMDCalculator(model_files["float64"])
    for a in frames:
        a.calc = calc
        a.info["REF_energy"] = a.get_potential_energy() + 0.3  # 0.1 eV/atom off
        a.arrays["REF_forces"] = a.get_forces()
        a.info["REF_stress"] = a.get_stress()
        a.calc = None
    ase.io.write(tmp_path / "ref.xyz", frames)
    js = tmp_path / "ev.json"
    assert main(["evaluate", str(model_files["float64"]), str(tmp_path / "ref.xyz"), "--plot",
                 str(tmp_path / "p.png"), "--json", str(js)]) == 0
    import json

    res = json.loads(js.read_text())
    assert res["energy_per_atom_mae"] == pytest.approx(100.0, rel=1e-6) and res["forces_mae"] < 1e-3
    assert "stress_mae" in res
    for a in frames:
        a.info["my_E"] = a.info.pop("REF_energy")
        del a.arrays["REF_forces"]
        del a.info["REF_stress"]
    ase.io.write(tmp_path / "none.xyz", frames)
    assert main(["evaluate", str(model_files["float64"]), str(tmp_path / "none.xyz")]) == 2
    err = capsys.readouterr().err
    assert "no energy, force or stress labels" in err and "my_E" in err and "--energy-key" in err
    assert main(["evaluate", str(model_files["float64"]), str(tmp_path / "none.xyz"), "--energy-key", "my_E",
                 "--plot", str(tmp_path / "p2.png")]) == 0


# ------------------------------------------------------------------------------------- ASE float64 sum


def test_ase_energy_is_the_float64_sum_of_atomic_energies(model_files):
    """12,288 atoms, float32 model: the model's own float32 total is off from the exact sum of its per-atom
    energies by ~1e-3 eV (measured 1.35e-3); the ASE energy is that sum in float64."""
    from mlmd.deploy.load import load_model
    from mlmd.engines.ase import MLMDCalculator

    atoms = water_box(16, seed=0)
    assert len(atoms) == 12288
    atoms.calc = MLMDCalculator(model_files["float32"])
    e = atoms.get_potential_energy()
    exact = math.fsum(atoms.calc.results["energies"])
    assert abs(e - exact) < 1e-7 * 1e-3 * len(atoms)
    module, _ = load_model(model_files["float32"])
    f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    out = module.compute(f32(atoms.positions), f32(atoms.cell.array), torch.as_tensor(atoms.numbers),
                         torch.as_tensor(atoms.pbc), False)
    assert abs(float(out["energy"]) - exact) > 1e-4  # the construction does show the float32 summation error
