"""OpenMM and the Ewald/PME accuracy (issue 16 part 5): the promised force accuracy checked once per Context for
predicted charges, and parameters tuned to the structure's own charges and box (``tune_electrostatics``).

Reference: the same model packaged with Ewald at accuracy 1e-12 (fixed charges: 1e-9), whose forces differ from the
tested model's only by the Ewald error, on a ZnO-like ±2 crystal whose charge density is 3x the one default
parameters are chosen for.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import openmm
import pytest
from openmm import unit

from conftest import (
    CHARGE_OFFSETS,
    IONIC_OFFSETS,
    ase_forces,
    make_charged_potential,
    make_potential,
    rms,
    water_box,
    zno_like,
)
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.engines.openmm import MLMDPotential, OpenMMSetupError, topology_from_atoms
from mlmd.model.longrange import CoulombTerm
from mlmd.model.predicted_charges import PredictedCoulombTerm
from mlmd.units import COULOMB_EV_A, EV_TO_KJ_PER_MOL

pytestmark = pytest.mark.openmm

ACCURACY = 1e-4
TARGET = ACCURACY * COULOMB_EV_A
KJ = unit.kilojoule_per_mole


def predicted(path, accuracy, offsets=IONIC_OFFSETS):
    term = PredictedCoulombTerm(offsets, accuracy=accuracy, method="ewald")
    package(make_charged_potential(seed=2, offsets=offsets), path, long_range=[term])
    return path


def fixed(path, accuracy, method="ewald"):
    term = CoulombTerm(IONIC_OFFSETS, accuracy=accuracy, method=method)
    package(make_potential(seed=1), path, long_range=[term])
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ewald")
    return {
        "predicted": predicted(d / "predicted.pt", ACCURACY),
        "predicted_ref": predicted(d / "predicted_ref.pt", 1e-12),
        "water": predicted(d / "water.pt", ACCURACY, CHARGE_OFFSETS),
        "fixed": fixed(d / "fixed.pt", ACCURACY),
        "fixed_pme": fixed(d / "fixed_pme.pt", ACCURACY, "pme"),
        "fixed_ref": fixed(d / "fixed_ref.pt", 1e-9)  # 576 atoms: 1e-12 needs 4 GB,
    }


def forces(system, positions, contexts=1):
    out = None
    for _ in range(contexts):
        ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(positions)
        for _ in range(2):  # two evaluations per Context: checked once
            st = ctx.getState(getForces=True)
        out = st.getForces(asNumpy=True).value_in_unit(KJ / unit.angstrom) / EV_TO_KJ_PER_MOL
    return np.asarray(out)


def warnings_in(text):
    return re.findall(r"estimated electrostatic force error (\S+) eV/Å exceeds the target (\S+) eV/Å", text)


def test_predicted_charges_checked_once_per_context(models, capfd):
    atoms = zno_like()
    top, pos = topology_from_atoms(atoms)
    system = MLMDPotential(models["predicted"]).createSystem(top)
    capfd.readouterr()
    forces(system, pos, contexts=2)
    err = capfd.readouterr().err
    found = warnings_in(err)
    assert len(found) == 2, err  # once in each Context, not at every evaluation
    assert "tune_electrostatics=True" in err
    # the estimate is the Python one for the charges the model predicts there (ASE's check, same formula)
    a = atoms.copy()
    a.calc = MLMDCalculator(models["predicted"])
    with pytest.warns(UserWarning, match="exceeds the target") as caught:
        a.get_forces()
    assert warnings_in(str(caught[0].message))[0] == found[0]
    assert float(found[0][1]) == pytest.approx(TARGET, rel=1e-2)

    water = water_box(3, seed=4)
    top, pos = topology_from_atoms(water)
    system = MLMDPotential(models["water"]).createSystem(top)
    capfd.readouterr()
    forces(system, pos)
    assert not warnings_in(capfd.readouterr().err)


def test_tuned_predicted_charges_meet_the_accuracy(models, capfd):
    atoms = zno_like()
    top, pos = topology_from_atoms(atoms)
    f_ref = ase_forces(atoms, models["predicted_ref"], tune_electrostatics=True)
    untuned = forces(MLMDPotential(models["predicted"]).createSystem(top), pos)
    assert rms(untuned - f_ref) > 1.5 * TARGET  # the reference density's parameters miss it here
    with pytest.raises(OpenMMSetupError, match="needs the positions"):
        MLMDPotential(models["predicted"], tune_electrostatics=True).createSystem(top)
    capfd.readouterr()
    tuned = forces(MLMDPotential(models["predicted"], tune_electrostatics=True).createSystem(top, positions=pos), pos)
    assert not warnings_in(capfd.readouterr().err)
    assert rms(tuned - f_ref) <= TARGET, rms(tuned - f_ref)  # measured 0.29 x the target
    # the same parameters as the ASE calculator's tuning: the same forces to rounding
    np.testing.assert_allclose(tuned, ase_forces(atoms, models["predicted"], tune_electrostatics=True), atol=1e-10)


@pytest.mark.parametrize("name", ["fixed", "fixed_pme"])
@pytest.mark.parametrize("electrostatics", ["model", "engine"])
def test_tuned_fixed_charges_meet_the_accuracy(models, name, electrostatics):
    atoms = zno_like((6, 6, 4) if electrostatics == "engine" else (3, 3, 2))  # engine PME: 8 Å within half the box
    top, pos = topology_from_atoms(atoms)
    f_ref = ase_forces(atoms, models["fixed_ref"], tune_electrostatics=True)
    with pytest.warns(UserWarning, match="exceeds the target"):
        untuned = forces(MLMDPotential(models[name], electrostatics).createSystem(top), pos)
    assert rms(untuned - f_ref) > 1.5 * TARGET  # measured 2.2x
    potential = MLMDPotential(models[name], electrostatics, tune_electrostatics=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuned = forces(potential.createSystem(top), pos)
    assert rms(tuned - f_ref) <= TARGET, rms(tuned - f_ref)  # measured 0.46-0.48 x the target
    if electrostatics == "model":
        np.testing.assert_allclose(tuned, ase_forces(atoms, models[name], tune_electrostatics=True), atol=1e-10)


def test_tuning_leaves_the_loaded_model_alone(models):
    """Tuning works on a fresh copy: a System built afterwards without it has the model's own parameters."""
    atoms = zno_like()
    top, pos = topology_from_atoms(atoms)
    potential = MLMDPotential(models["fixed"], tune_electrostatics=True)
    potential.createSystem(top)
    loaded = potential.mlpotential._impl.model.module
    coulomb = [m for m in loaded.modules() if getattr(m, "original_name", "") == "Electrostatics"][0]
    card = potential.card.long_range.electrostatics
    assert float(coulomb.smearing) == pytest.approx(card.details["smearing"], rel=1e-14)
