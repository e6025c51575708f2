"""Uncertainty during MD: the gate harvests exactly the frames above threshold, stops on request, and OpenMM's
reporter reports what the ASE calculator computes for the same positions."""

import csv

import ase.io
import numpy as np
import pytest

from conftest import make_potential, water_box
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.ensemble import EnsemblePotential
from mlmd.uncertainty import UncertaintyExceeded, UncertaintyGate


@pytest.fixture(scope="module")
def committee_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("unc") / "committee.pt"
    package(EnsemblePotential([make_potential(seed=k) for k in range(3)]), path)
    return path


@pytest.fixture(scope="module")
def box_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("box") / "box.xyz"
    ase.io.write(path, water_box(2, seed=5, spacing=3.6))  # OpenMM needs widths >= 2 r_cut
    return path


def _log(path):
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(open(path))]


def test_gate_harvests_exactly_frames_above_threshold(tmp_path, committee_file, box_file):
    from mlmd.md import run_md

    # first a log-only run gives the spread along the trajectory; the threshold is then put between values
    probe = tmp_path / "probe.csv"
    run_md(committee_file, structure=box_file, steps=20, log_every=2, timestep_fs=0.5,
           uncertainty={"log": probe})
    values = np.array([r["max_force_std_eV_A"] for r in _log(probe)])
    assert len(values) == 11 and np.all(values > 0)  # steps 0, 2, ..., 20
    ranked = np.sort(values)
    threshold = float(ranked[5] + ranked[6]) / 2  # between two logged values: no ties
    harvest, log = tmp_path / "uncertain.xyz", tmp_path / "unc.csv"
    res = run_md(committee_file, structure=box_file, steps=20, log_every=2, timestep_fs=0.5,
                 uncertainty={"threshold": threshold, "harvest": harvest, "log": log})
    rows = _log(log)
    np.testing.assert_allclose([r["max_force_std_eV_A"] for r in rows], values, rtol=1e-10)  # same seed, same run
    above = [int(r["step"]) for r in rows if r["max_force_std_eV_A"] > threshold]
    assert 0 < len(above) < len(rows)
    frames = ase.io.read(harvest, ":")
    assert [f.info["md_step"] for f in frames] == above and res["n_harvested"] == len(above)
    calc = MLMDCalculator(committee_file)
    for f in frames:  # the stored spread is the model's for the stored positions
        f.calc = calc
        f.get_potential_energy()
        assert f.info["max_force_std"] > threshold
        np.testing.assert_allclose(calc.results["forces_std"], f.arrays["force_std"], rtol=1e-5)  # extxyz: 8 digits


def test_gate_stops_the_run(tmp_path, committee_file, box_file):
    from mlmd.md import run_md

    with pytest.raises(UncertaintyExceeded, match="step 0: force uncertainty .* exceeds the threshold 0.000"):
        run_md(committee_file, structure=box_file, steps=5, log_every=5, uncertainty={"threshold": 0.0, "stop": True})


def test_gate_unit():
    gate = UncertaintyGate(threshold=0.5)
    atoms = water_box(1)
    assert not gate.check(1, atoms, 0.1, np.array([0.1, 0.5, 0.2]))  # equal to the threshold is not above
    assert gate.check(2, atoms, 0.1, np.array([0.1, 0.51, 0.2]))
    assert [r["harvested"] for r in gate.records] == [0, 1]


def test_md_refuses_single_model(tmp_path, model_files, box_file):
    from mlmd.md import run_md

    with pytest.raises(ValueError, match="not a committee model"):
        run_md(model_files["float64"], structure=box_file, steps=2, uncertainty={"threshold": 0.1})


@pytest.mark.openmm
def test_openmm_reporter_matches_ase(tmp_path, committee_file, box_file):
    import openmm
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, UncertaintyReporter, topology_from_atoms

    atoms = ase.io.read(box_file)
    top, pos = topology_from_atoms(atoms)
    system = MLMDPotential(committee_file).createSystem(top)
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.25 * unit.femtosecond)
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(pos)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    log = tmp_path / "omm.csv"
    rep = UncertaintyReporter(committee_file, 5, top, log=log)
    sim.reporters.append(rep)
    sim.step(10)
    assert [int(r["step"]) for r in _log(log)] == [5, 10]
    state = sim.context.getState(getPositions=True, getEnergy=True)
    a = atoms.copy()
    a.positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    calc = MLMDCalculator(committee_file)
    a.calc = calc
    e = a.get_potential_energy()
    np.testing.assert_allclose(rep.last["energy_std"], calc.results["energy_std"], rtol=1e-9)
    np.testing.assert_allclose(rep.last["forces_std"], calc.results["forces_std"], rtol=1e-8, atol=1e-12)
    # the dynamics runs on the committee mean
    epot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / 96.48533212331002
    assert abs(epot - e) < 1e-6 * max(1.0, abs(e))
