"""Calibration metrics on synthetic errors with known spread; the active-learning loop end to end (EMT)."""

import csv
import json

import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT

from mlmd.calibration import calibration_metrics, committee_calibration


def test_calibrated_gaussian_errors():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 0.5, 20000)
    err = rng.normal(0, sigma)
    m = calibration_metrics(err, sigma)
    assert m["miscalibration_area"] < 0.01
    assert abs(m["nll_scale"] - 1) < 0.02
    assert m["spearman"] > 0.4  # a larger sigma means larger errors on average
    over = calibration_metrics(err, sigma / 3)  # overconfident by 3x
    assert over["miscalibration_area"] > 0.2 and abs(over["nll_scale"] - 3) < 0.1
    shuffled = calibration_metrics(err, rng.permutation(sigma))  # right sizes, no ranking
    assert abs(shuffled["spearman"]) < 0.03


def test_select_frames_and_plausibility():
    from ase import Atoms

    from mlmd.learn import is_plausible, select_frames

    assert select_frames(list(range(10)), 4) == [0, 3, 6, 9]
    assert select_frames(list(range(3)), 5) == [0, 1, 2]
    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.5]], cell=[5, 5, 5], pbc=True)
    a.info["max_force_std"] = 0.3
    assert is_plausible(a, 1.0, 0.4) and not is_plausible(a, 1.0, 0.6) and not is_plausible(a, 0.2, 0.0)


def test_committee_calibration_uses_component_sigma():
    rng = np.random.default_rng(1)
    std = rng.uniform(0.05, 0.3, 5000)  # per-atom RMS over components: component sigma = std / sqrt(3)
    f_err = rng.normal(0, std[:, None] / np.sqrt(3), (5000, 3))
    e_std = rng.uniform(0.1, 1, 500)
    out = committee_calibration(f_err, std, rng.normal(0, e_std), e_std)
    assert out["forces_miscalibration_area"] < 0.01 and abs(out["forces_nll_scale"] - 1) < 0.03
    assert out["energy_miscalibration_area"] < 0.04 and out["forces_atom_spearman"] > 0.5


def _learn_config(tmp_path, emt_data, name):
    frames = ase.io.read(emt_data, ":")
    ase.io.write(tmp_path / "initial.xyz", frames[:6])
    ase.io.write(tmp_path / "test.xyz", frames[14:])
    ase.io.write(tmp_path / "start.xyz", frames[6])
    train = {
        "data": {"path": "unused.xyz", "val_fraction": 0.2, "test_fraction": 0.0},
        "model": {"r_cut": 4.0, "channels": 8, "vector_channels": 4, "l_max": 1, "n_layers": 1, "n_basis": 6,
                  "radial_hidden": 16, "dtype": "float64"},
        "train": {"epochs": 2, "batch_size": 2, "lr": 0.01},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    learn = {
        "train_config": "train.yaml", "initial_data": "initial.xyz", "test_sets": {"test": "test.xyz"},
        "rounds": 2, "ensemble": 2, "reference": "emt", "seed": 3, "output_dir": str(tmp_path / name),
        "explore": {"structures": ["start.xyz"], "temperatures": [2000.0], "steps": 12, "timestep_fs": 2.0,
                    "check_every": 2, "threshold": 0.0, "max_frames": 3},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(learn))
    return path


@pytest.mark.slow
def test_learn_loop_harvests_labels_and_reproduces(tmp_path, emt_data):
    from mlmd.cli import main
    from mlmd.learn import load_learn_config

    for name in ("a", "b"):
        assert main(["learn", str(_learn_config(tmp_path, emt_data, name)), "--no-progress"]) == 0
    rows = {n: list(csv.DictReader(open(tmp_path / n / "learn.csv"))) for n in "ab"}
    assert len(rows["a"]) == 2 and (tmp_path / "a" / "learn.png").stat().st_size > 1000
    assert int(rows["a"][1]["n_structures"]) == 6 + int(rows["a"][0]["n_labelled"]) == 9
    # the labelled frames are harvested ones (first, middle, last of 7), with reference labels attached
    harvested = ase.io.read(tmp_path / "a" / "round_0" / "harvest_0.xyz", ":")
    labelled = ase.io.read(tmp_path / "a" / "round_0" / "labelled.xyz", ":")
    assert [f.info["md_step"] for f in harvested] == [0, 2, 4, 6, 8, 10, 12]
    assert [f.info["md_step"] for f in labelled] == [0, 6, 12]
    for f in labelled:
        np.testing.assert_allclose(f.positions, harvested[f.info["md_step"] // 2].positions)
        ref = f.copy()
        ref.calc = EMT()
        assert f.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    # same seeds, same everything: frames, errors, calibration
    for ra, rb in zip(rows["a"], rows["b"]):
        for k in ra:
            if k != "seconds":
                assert ra[k] == rb[k], k
    # an interrupted run resumes: trained members, models and labels are reused, the table is the same
    (tmp_path / "a" / "round_1" / "model.pt").unlink()
    assert main(["learn", str(tmp_path / "a.yaml"), "--no-progress", "--resume"]) == 0
    again = list(csv.DictReader(open(tmp_path / "a" / "learn.csv")))
    assert again == rows["a"]
    cfg = load_learn_config(tmp_path / "a.yaml")
    assert cfg.explore.threshold == 0.0
    assert json.loads((tmp_path / "a" / "learn_config.json").read_text())["rounds"] == 2


# ------------------------------------------------------------------------------------------ reference calculators


def _write_calculators(tmp_path, monkeypatch):
    """An importable module with calculators that lack forces or stress (what a user's wrapper might be)."""
    (tmp_path / "my_calcs.py").write_text(
        "from ase.calculators.calculator import Calculator\n"
        "class EnergyOnly(Calculator):\n"
        "    implemented_properties = ['energy']\n"
        "class NoStress(Calculator):\n"
        "    implemented_properties = ['energy', 'forces']\n"
        "    def calculate(self, atoms=None, properties=None, system_changes=None):\n"
        "        super().calculate(atoms, properties, system_changes)\n"
        "        self.results = {'energy': 1.0, 'forces': 0.0 * self.atoms.positions}\n"
        "class Broken(NoStress):\n"
        "    def calculate(self, atoms=None, properties=None, system_changes=None):\n"
        "        raise RuntimeError('SCF did not converge')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_reference_forms_parse():
    from mlmd.config import ConfigError
    from mlmd.learn import BUILTIN_REFERENCES, parse_reference

    assert parse_reference("gfn2") is BUILTIN_REFERENCES["gfn2"]
    assert parse_reference("emt").calculator == "ase.calculators.emt:EMT"
    ref = parse_reference({"calculator": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 2.3}})
    assert (ref.calculator, ref.kwargs) == ("ase.calculators.lj:LennardJones", {"sigma": 2.3})
    for bad, words in [("dft", "reference must be gfn2, emt"), ({"calculator": "ase.calculators.emt"}, "module:Class"),
                       ({"calculator": "a:B", "kwargs": [1]}, "kwargs must be a mapping"),
                       ({"calculator": "a:B", "kwrgs": {}}, "unknown key")]:
        with pytest.raises(ConfigError, match=words):
            parse_reference(bad)


def test_reference_errors_are_clear(tmp_path, monkeypatch):
    from mlmd.config import ConfigError
    from mlmd.learn import check_reference, parse_reference

    _write_calculators(tmp_path, monkeypatch)
    cases = [
        ("no_such_package_xyz:Calc", {}, False, "cannot import module 'no_such_package_xyz'"),
        ("ase.calculators.emt:NoSuchClass", {}, False, "has no 'NoSuchClass'"),
        ("ase.calculators.tip3p:TIP3P", {"rcutt": 1.0}, False, "could not be created.*rcutt"),
        ("my_calcs:EnergyOnly", {}, False, r"cannot give forces \(its implemented_properties: \['energy'\]\)"),
        ("my_calcs:NoStress", {}, True, "cannot give stress.*train.stress_weight"),
        ("ase.calculators.tip3p:TIP3P", {}, True, "cannot give stress"),
    ]
    for spec, kwargs, need_stress, words in cases:
        with pytest.raises(ConfigError, match=words):
            check_reference(parse_reference({"calculator": spec, "kwargs": kwargs}), need_stress)
    check_reference(parse_reference({"calculator": "my_calcs:NoStress"}), False)  # enough without stress
    check_reference(parse_reference({"calculator": "ase.calculators.lj:LennardJones"}), True)


def test_label_frames_with_any_calculator(tmp_path, monkeypatch, emt_data):
    from ase.calculators.lj import LennardJones

    from mlmd.learn import label_frames

    _write_calculators(tmp_path, monkeypatch)
    frames = ase.io.read(emt_data, ":3")
    kwargs = {"sigma": 2.3, "epsilon": 0.05, "rc": 5.0}
    labelled = label_frames(frames, {"calculator": "ase.calculators.lj:LennardJones", "kwargs": kwargs})
    for a, b in zip(frames, labelled):
        ref = a.copy()
        ref.calc = LennardJones(**kwargs)  # the kwargs reach the calculator
        assert b.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(b.get_forces(), ref.get_forces(), atol=1e-12)
        np.testing.assert_allclose(b.get_stress(), ref.get_stress(), atol=1e-12)
        np.testing.assert_allclose(b.positions, a.positions)
    no_stress = label_frames(frames[:1], {"calculator": "my_calcs:NoStress"})
    assert no_stress[0].get_potential_energy() == 1.0 and "stress" not in no_stress[0].calc.results
    with pytest.raises(ValueError, match="failed on all 2 frames.*SCF did not converge"):
        label_frames(frames[:2], {"calculator": "my_calcs:Broken"})


def test_learn_config_refuses_a_reference_without_stress(tmp_path, emt_data):
    from mlmd.cli import main

    path = _learn_config(tmp_path, emt_data, "nostress")
    cfg = yaml.safe_load(path.read_text())
    cfg["reference"] = {"calculator": "ase.calculators.tip3p:TIP3P"}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["learn", str(path), "--no-progress"]) == 2  # refused before any training
    assert not (tmp_path / "nostress").exists()
    # without stress in the loss the same calculator is accepted
    train = yaml.safe_load((tmp_path / "train.yaml").read_text())
    train["train"]["stress_weight"] = 0.0
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    from mlmd.learn import load_learn_config

    assert load_learn_config(path).reference == {"calculator": "ase.calculators.tip3p:TIP3P"}


@pytest.mark.slow
def test_learn_with_a_generic_ase_calculator(tmp_path, emt_data):
    """One short run with the reference given as module:Class: the labelled frames carry that calculator's
    energies, forces and stress."""
    from mlmd.cli import main

    path = _learn_config(tmp_path, emt_data, "generic")
    cfg = yaml.safe_load(path.read_text())
    cfg["reference"] = {"calculator": "ase.calculators.emt:EMT", "kwargs": {"fixed_cutoff": True}}
    cfg["explore"]["steps"] = 4
    path.write_text(yaml.safe_dump(cfg))
    assert main(["learn", str(path), "--no-progress"]) == 0
    labelled = ase.io.read(tmp_path / "generic" / "round_0" / "labelled.xyz", ":")
    assert len(labelled) == 3
    for f in labelled:
        assert f.info["reference"] == "ase.calculators.emt:EMT"
        ref = f.copy()
        ref.calc = EMT()
        assert f.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(f.get_forces(), ref.get_forces(), atol=1e-5)
        np.testing.assert_allclose(f.get_stress(), ref.get_stress(), atol=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "generic" / "learn.csv")))
    assert int(rows[1]["n_structures"]) == 9
    # the committee's card records the density of the round's training cells (mlmd validate builds boxes at it)
    from mlmd.engines.lammps import model_card

    for r in (0, 1):
        data = ase.io.read(tmp_path / "generic" / f"round_{r}" / "data.xyz", ":")
        rho = float(np.median([len(a) / a.cell.volume for a in data]))
        card = model_card(tmp_path / "generic" / f"round_{r}" / "model.pt")
        assert card.training_number_density == pytest.approx(rho, rel=1e-5)
