"""LAMMPS and the Ewald accuracy (issue 16 part 5). pair_style mlmd sums the Ewald energy of predicted charges
itself: once per run, with the first step's charges summed over ranks, it estimates the force error of its
parameters with the formulas of mlmd/ewald_params.py (plugins/lammps/mlmd_ewald_params.cpp) and warns when it
exceeds the card's accuracy; `ewald tune` chooses sigma and the k-space cutoff for those charges. Fixed charges:
`mlmd lammps-input --structure` writes the splitting chosen for the structure's own charges and cell.

References: mlmd.ewald_params on the charges LAMMPS dumps (the same numbers to 1e-12); the same model packaged at
accuracy 1e-12 through the ASE calculator (forces within the promised accuracy); ASE's tune_electrostatics (the
same parameters, so the same forces to rounding).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import mlmd.engines.lammps as L
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
from mlmd import ewald_params as ep
from mlmd.deploy.export import package
from mlmd.model.longrange import CoulombTerm
from mlmd.model.predicted_charges import PredictedCoulombTerm
from mlmd.units import COULOMB_EV_A

pytestmark = pytest.mark.lammps

ACCURACY = 1e-4
TARGET = ACCURACY * COULOMB_EV_A
NUMBER = r"([-+0-9.eE]+)"
LOGGED = re.compile(
    rf"Ewald of the predicted charges at step \d+ \(sum q\^2 {NUMBER} e\^2, (\d+) atoms, volume {NUMBER} Å\^3\): "
    rf"(tuned )?sigma {NUMBER} Å, k-space cutoff {NUMBER} 1/Å, real-space cutoff {NUMBER} Å; estimated RMS force "
    rf"error {NUMBER} eV/Å \(real space {NUMBER}, reciprocal {NUMBER}\), target {NUMBER} eV/Å"
)


def predicted(path, accuracy, offsets=IONIC_OFFSETS):
    term = PredictedCoulombTerm(offsets, accuracy=accuracy, method="ewald")
    package(make_charged_potential(seed=2, offsets=offsets), path, long_range=[term])
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ewald")
    fixed = CoulombTerm(IONIC_OFFSETS, accuracy=ACCURACY, method="ewald")
    package(make_potential(seed=1), d / "fixed.pt", long_range=[fixed])
    package(make_potential(seed=1), d / "fixed_ref.pt",
            long_range=[CoulombTerm(IONIC_OFFSETS, accuracy=1e-12, method="ewald")])
    return {
        "predicted": predicted(d / "predicted.pt", ACCURACY),
        "predicted_ref": predicted(d / "predicted_ref.pt", 1e-12),
        "water": predicted(d / "water.pt", ACCURACY, CHARGE_OFFSETS),
        "fixed": d / "fixed.pt",
        "fixed_ref": d / "fixed_ref.pt",
    }


def run(atoms, model, tmp_path, nprocs=1, tune=False):
    """L.compute with the charges LAMMPS holds (dumped, sorted by atom ID) and the logged Ewald line(s)."""
    lines = L.pair_lines(model, natoms=len(atoms))
    if tune:
        lines[0] += " ewald tune"
    dump = ["dump            mlmd_q all custom 1 q.txt id q", "dump_modify     mlmd_q sort id format float %.17g"]
    res = L.compute(atoms, model, nprocs=nprocs, workdir=tmp_path, extra_lines=dump, pair_lines_override=lines)
    text = (tmp_path / "q.txt").read_text().splitlines()
    start = text.index(next(line for line in text if line.startswith("ITEM: ATOMS"))) + 1
    q = np.array([float(line.split()[1]) for line in text[start : start + len(atoms)]])
    return res, q, LOGGED.findall(res.log)


def card_params(model):
    return L.model_card(model).long_range.electrostatics.to_json()


@pytest.mark.parametrize("nprocs", [1, 2])
def test_estimate_equals_python_and_warns_once(models, tmp_path, nprocs):
    atoms = zno_like()
    res, q, logged = run(atoms, models["predicted"], tmp_path, nprocs)
    assert len(logged) == 1, res.log[-3000:]  # once per run
    sum_q2, n, volume, tuned, sigma, k_cut, r_cut, total, real, kspace, target = logged[0]
    assert not tuned and int(n) == len(atoms)
    est = ep.estimate_errors(card_params(models["predicted"]), q, atoms.cell.array)
    assert float(sum_q2) == pytest.approx(float(np.sum(q**2)), rel=1e-12)
    assert float(volume) == pytest.approx(atoms.get_volume(), rel=1e-12)
    assert float(real) == pytest.approx(est["real"], rel=1e-12)
    assert float(kspace) == pytest.approx(est["ewald_kspace"], rel=1e-12)
    assert float(total) == pytest.approx(np.hypot(est["real"], est["ewald_kspace"]), rel=1e-12)
    assert float(target) == pytest.approx(TARGET, rel=1e-12)
    warnings = re.findall(r"WARNING: pair_style mlmd: .*estimated electrostatic force error .*", res.log)
    assert len(warnings) == 1 and "ewald tune" in warnings[0], res.log[-3000:]


def test_water_does_not_warn(models, tmp_path):
    res, q, logged = run(water_box(3, seed=4), models["water"], tmp_path)
    assert len(logged) == 1 and float(logged[0][7]) <= float(logged[0][10])
    assert "force error" not in "\n".join(line for line in res.log.splitlines() if "WARNING" in line)


@pytest.mark.parametrize("nprocs", [1, 2])
def test_tuned_predicted_charges_meet_the_accuracy(models, tmp_path, nprocs):
    atoms = zno_like()
    f_ref = ase_forces(atoms, models["predicted_ref"], tune_electrostatics=True)
    untuned, _, _ = run(atoms, models["predicted"], tmp_path / "untuned", nprocs)
    assert rms(untuned.forces - f_ref) > 1.5 * TARGET  # the reference density's parameters miss it: 2.06 x
    res, q, logged = run(atoms, models["predicted"], tmp_path / "tuned", nprocs, tune=True)
    assert len(logged) == 1 and logged[0][3] == "tuned "
    assert "force error" not in "\n".join(line for line in res.log.splitlines() if "WARNING" in line)
    assert rms(res.forces - f_ref) <= TARGET, rms(res.forces - f_ref) / TARGET  # measured 0.28 x, 1 and 2 ranks
    # the parameters Python chooses for the same charges and cell (ASE's and OpenMM's tuning)
    chosen = ep.choose_parameters(ACCURACY, r_cut=card_params(models["predicted"])["r_cut"], charges=q,
                                  cell=atoms.cell.array)
    assert float(logged[0][4]) == pytest.approx(chosen["smearing"], rel=1e-12)
    assert float(logged[0][5]) == pytest.approx(chosen["k_cutoff"], rel=1e-12)
    assert float(logged[0][7]) == pytest.approx(TARGET, rel=1e-9)  # the estimate equals the target: no warning
    np.testing.assert_allclose(res.forces, ase_forces(atoms, models["predicted"], tune_electrostatics=True),
                               rtol=0, atol=1e-9)


def test_lammps_input_tunes_fixed_and_predicted_charges(models, tmp_path, capsys):
    """`mlmd lammps-input --structure`: gewald for the structure's fixed charges (LAMMPS's kspace then meets the
    accuracy), `ewald tune` for predicted ones; the lines run as written."""
    from test_lammps_longrange import lammps_input_energy

    atoms = zno_like()
    for sub in ("p", "f"):
        (tmp_path / sub).mkdir()
    text, _ = lammps_input_energy(models["predicted"], atoms, tmp_path / "p", capsys)
    assert re.search(r"^pair_style mlmd \S+ ewald tune$", text, re.M), text
    text, _ = lammps_input_energy(models["fixed"], atoms, tmp_path / "f", capsys)
    alpha = float(re.search(r"^kspace_modify\s+gewald (\S+)", text, re.M).group(1))
    q = [IONIC_OFFSETS[int(z)] for z in atoms.numbers]
    params = card_params(models["fixed"])
    chosen = ep.choose_parameters(ACCURACY, r_cut=params["r_cut"], charges=q, cell=atoms.cell.array)
    assert alpha == pytest.approx(chosen["alpha"], rel=1e-12) and alpha != pytest.approx(params["alpha"], rel=1e-3)
    lines = [line for line in text.splitlines() if line.startswith(("pair_", "kspace_", "set ", "neigh_"))]
    res = L.compute(atoms, models["fixed"], workdir=tmp_path / "fc", pair_lines_override=lines)
    f_ref = ase_forces(atoms, models["fixed_ref"], tune_electrostatics=True)
    assert rms(res.forces - f_ref) <= TARGET, rms(res.forces - f_ref) / TARGET  # measured 0.46 x the target
    untuned = L.compute(atoms, models["fixed"], workdir=tmp_path / "fu")  # the model's splitting: 2.2 x
    assert rms(untuned.forces - f_ref) > 1.5 * TARGET


def test_checked_every_run_and_tuned_once(models, tmp_path):
    """Two runs with the atoms moved between them: the check runs at the first step of each (two estimates, two
    warnings); `ewald tune` tunes at the first run only and keeps its parameters (the energy stays conservative)."""
    atoms = zno_like()
    between = ["run             0", "displace_atoms  all random 0.05 0.05 0.05 4321 units box"]
    lines = L.pair_lines(models["predicted"], natoms=len(atoms))
    res = L.compute(atoms, models["predicted"], workdir=tmp_path / "m", pair_lines_override=lines,
                    extra_lines=between)
    logged = LOGGED.findall(res.log)
    assert len(logged) == 2 and logged[0][0] != logged[1][0]  # sum q^2 changed with the positions
    assert len(re.findall(r"WARNING: pair_style mlmd: .*force error", res.log)) == 2
    res = L.compute(atoms, models["predicted"], workdir=tmp_path / "t", extra_lines=between,
                    pair_lines_override=[lines[0] + " ewald tune", *lines[1:]])
    logged = LOGGED.findall(res.log)
    assert len(logged) == 2 and logged[0][3] == logged[1][3] == "tuned "
    assert logged[0][4] == logged[1][4] and logged[0][5] == logged[1][5]  # sigma and k_cut kept
    assert logged[0][0] != logged[1][0]
