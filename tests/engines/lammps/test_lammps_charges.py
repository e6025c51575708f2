"""LAMMPS with a predicted-charge model: pair_style mlmd predicts the charges every step and sums their Ewald energy
itself (plugins/lammps/pair_mlmd_charges.cpp), with the force term -sum_i phi_i dq_i/dR.

References: the model's whole-system entry through the ASE calculator (torch-pme's Ewald with autograd forces and
stress, dq/dR included) with the same Ewald parameters (the card's; accuracy 1e-12); central finite differences of
the LAMMPS energy itself. Both sides sum the same Ewald terms (same real-space pairs, same k-vectors), so they
agree to rounding: measured (81-atom water box, 1/2/4 ranks) energy <= 1.7e-16 relative, forces <= 1.6e-14 eV/Å
(max |F| 4.9 eV/Å), stress <= 4e-16 eV/Å^3; the tolerances below (1e-10 relative, 1e-9 eV/Å, 1e-10 eV/Å^3) leave
room for summation order and are still far below the Ewald accuracy's own 1.4e-11 eV/Å x sqrt(N) scale.
"""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
from ase import Atoms

import mlmd.engines.lammps as L
from conftest import CHARGE_OFFSETS, make_charged_potential, water_box
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.predicted_charges import PredictedCoulombTerm

pytestmark = pytest.mark.lammps

E_REL, F_ABS, S_ABS = 1e-10, 1e-9, 1e-10


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("charges") / "predicted.pt"
    term = PredictedCoulombTerm(CHARGE_OFFSETS, accuracy=1e-12, method="ewald")
    package(make_charged_potential(seed=2), path, long_range=[term])
    return path


def reference(atoms, model):
    a = atoms.copy()
    a.calc = MLMDCalculator(model)
    return a.get_potential_energy(), a.get_forces(), a.get_stress(), a.calc.results["charges"]


def lammps(atoms, model, tmp_path, nprocs=1, lines=None):
    """L.compute plus the charges LAMMPS holds (atom->q, dumped sorted by atom ID)."""
    dump = ["dump            mlmd_q all custom 1 q.txt id q", "dump_modify     mlmd_q sort id format float %.17g"]
    res = L.compute(atoms, model, nprocs=nprocs, workdir=tmp_path, extra_lines=dump, pair_lines_override=lines)
    text = (tmp_path / "q.txt").read_text().splitlines()
    start = text.index(next(line for line in text if line.startswith("ITEM: ATOMS"))) + 1
    q = np.array([float(line.split()[1]) for line in text[start : start + len(atoms)]])
    return res, q


def triclinic(atoms):
    cell = atoms.cell.array.copy()
    cell[1, 0] += 1.1
    cell[2, 0] -= 0.6
    cell[2, 1] += 0.8
    return Atoms(atoms.numbers, scaled_positions=atoms.get_scaled_positions(), cell=cell, pbc=True)


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_matches_ase(model, tmp_path, nprocs):
    atoms = water_box(3, seed=11)
    if nprocs == 2:
        atoms = triclinic(atoms)
    lines = L.pair_lines(model, natoms=len(atoms))
    assert lines[0].startswith("pair_style mlmd ") and len(lines) == 3  # no kspace, no coul style
    e, f, s, q_ref = reference(atoms, model)
    res, q = lammps(atoms, model, tmp_path, nprocs)
    assert np.ptp(q_ref[atoms.numbers == 8]) > 0.01  # the charges do depend on the environment
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-12)
    assert abs(res.energy - e) <= E_REL * abs(e), (res.energy, e)
    assert np.abs(res.forces - f).max() <= F_ABS
    assert np.abs(res.stress - s).max() <= S_ABS
    # pe/atom and the per-atom virials add up to the totals
    np.testing.assert_allclose(res.energies.sum(), res.energy, rtol=1e-12)
    np.testing.assert_allclose(res.atom_virials.sum(0), res.virial, rtol=0, atol=1e-9 * np.abs(res.virial).max())


def test_forces_are_the_energy_gradient(model, tmp_path):
    """Central differences of LAMMPS's own energy (2 ranks): the charge response -phi dq/dR included."""
    atoms = water_box(2, seed=12, spacing=3.3)
    res, _ = lammps(atoms, model, tmp_path / "0", nprocs=2)
    h = 1e-4
    for i, c in [(0, 0), (1, 2), (5, 1), (16, 0)]:
        e = []
        for sign in (1, -1):
            a = atoms.copy()
            a.positions[i, c] += sign * h
            e.append(L.compute(a, model, nprocs=2).energy)
        fd = -(e[0] - e[1]) / (2 * h)
        assert abs(fd - res.forces[i, c]) <= 1e-6 * max(1.0, abs(fd)), (i, c, fd, res.forces[i, c])


def test_energy_split(model, tmp_path):
    """ecoul holds the Coulomb energy of the predicted charges, evdwl the short-range energy (the model's split)."""
    atoms = water_box(2, seed=13, spacing=3.3)
    a = atoms.copy()
    a.calc = MLMDCalculator(model)
    e_total = a.get_potential_energy()
    q = a.calc.results["charges"]
    term = PredictedCoulombTerm(CHARGE_OFFSETS, accuracy=1e-12, method="ewald").double()
    import torch

    e_coul = float(term(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), torch.ones(3, dtype=torch.bool),
                        torch.tensor(q)).sum())
    script = L.lammps_input(model)
    data = tmp_path / "w.data"
    L.write_data(atoms, data, L.model_elements(model), L.charges_of(L.model_card(model), model))
    script = script.replace("# after it", f"read_data {data}\n# after it")
    script += "thermo_style custom step pe ecoul evdwl\nthermo_modify format float %.15g\nrun 0\n"
    (tmp_path / "in.split").write_text(script)
    log = L.run_lammps(tmp_path / "in.split", tmp_path, nprocs=2)
    pe, ecoul, evdwl = (float(v) for v in re.search(r"^\s+0\s+(\S+)\s+(\S+)\s+(\S+)\s*$", log, re.M).groups())
    assert abs(pe - e_total) <= E_REL * abs(e_total)
    assert abs(ecoul - e_coul) <= 1e-9 * abs(e_coul)
    assert abs(ecoul) > 10.0 and abs(evdwl + ecoul - pe) < 1e-9


def test_lammps_input_runs(model, tmp_path, capsys):
    from test_lammps_longrange import lammps_input_energy

    atoms = water_box(3, seed=14)
    text, pe = lammps_input_energy(model, atoms, tmp_path, capsys)
    assert "atom_style      charge" in text and "\nkspace_style" not in text and "coul/" not in text
    assert "predicted charges: pair_style mlmd computes them every step" in text
    e = reference(atoms, model)[0]
    assert abs(pe - e) <= E_REL * abs(e)


def _without_entry(src, dst):
    """The file as packaged before the local_charges entry: the card does not list it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("extra/mlmd_metadata.json"):
                meta = json.loads(data)
                meta["entry_points"] = [e for e in meta["entry_points"] if e != "local_charges"]
                data = json.dumps(meta).encode()
            zout.writestr(item, data)


def test_what_lammps_refuses(model, tmp_path):
    atoms = water_box(2, seed=15, spacing=3.3)
    lines = L.pair_lines(model)
    names = " ".join(L.model_elements(model))
    # a kspace style or a coul style would count the Coulomb energy twice
    with pytest.raises(L.LammpsError, match="remove kspace_style"):
        L.compute(atoms, model, pair_lines_override=[f"pair_style hybrid/overlay mlmd {model} coul/long 8.0",
                                                     f"pair_coeff * * mlmd {names}", "pair_coeff * * coul/long",
                                                     "kspace_style ewald 1e-6", "kspace_modify gewald 0.3"])
    with pytest.raises(L.LammpsError, match="parallel layers does not run predicted-charge models"):
        L.compute(atoms, model, nprocs=2, pair_lines_override=[lines[0] + " parallel layers", lines[1]])
    with pytest.raises(ValueError, match="periodic in x, y and z only"):
        L.pair_lines(model, periodic=False)
    # a file packaged before the entry: the input writer and the plugin both refuse it, naming the fix
    old = tmp_path / "old.pt"
    _without_entry(model, old)
    with pytest.raises(ValueError, match="without the local_charges entry .* repackage"):
        L.pair_lines(old)
    L.write_data(atoms, tmp_path / "w.data", L.model_elements(model), {e: 0.0 for e in L.model_elements(model)})
    (tmp_path / "in.old").write_text(f"units metal\natom_style charge\nnewton on\nread_data {tmp_path / 'w.data'}\n"
                                     f"pair_style mlmd {old}\npair_coeff * * {names}\nrun 0\n")
    with pytest.raises(L.LammpsError, match="without the local_charges entry"):
        L.run_lammps(tmp_path / "in.old", tmp_path)
