"""LAMMPS with a long-range model: pair_style hybrid/overlay mlmd + coul/long (Ewald or PPPM with the model's
splitting, cutoff and accuracy) + dispersion/d3, per-type charges from the metadata; the same energy, forces and
virial as the model's whole-system entry through the ASE calculator.

Measured (81-atom water box, charges O -0.8 / H 0.4, accuracy 1e-6, D3(BJ) PBE with 9 Å cutoffs): energy
6e-8 relative, forces 1.1e-6 eV/Å (Ewald) and 1.3e-5 eV/Å (PPPM), stress 8e-8 eV/Å^3, 1 and 2 ranks; the D3
part alone differs by 1.05e-6 relative (LAMMPS's older bohr/hartree constants). Tolerances below are set from
the Ewald accuracy: 1e-6 e^2/Å^2 x 14.4 eV Å = 1.4e-5 eV/Å RMS force error.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms

import mlmd.engines.lammps as L
from conftest import make_potential, water_box
from mlmd import keys as K
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.md import run_md
from mlmd.model.longrange import CoulombTerm, DispersionTerm

pytestmark = pytest.mark.lammps

CHARGES = {8: -0.8, 1: 0.4}
E_REL, F_ABS, S_ABS = 1e-6, 1e-4, 1e-6


def _coulomb():
    return CoulombTerm(CHARGES, accuracy=1e-6)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lr")
    out = {}
    d3 = dict(atomic_numbers=[1, 8], cutoff=9.0, cutoff_cn=9.0)
    for name, terms in {
        "coulomb": [_coulomb()],
        "pbe": [_coulomb(), DispersionTerm(functional="pbe", **d3)],
        "gfn2": [_coulomb(), DispersionTerm(functional="gfn2", **d3)],
        "atm": [DispersionTerm(functional="pbe", three_body=True, **d3)],
        "smooth": [DispersionTerm(functional="pbe", smooth_width=2.0, tail_correction=True, **d3)],
    }.items():
        out[name] = d / f"{name}.pt"
        package(make_potential(seed=3), out[name], long_range=terms)
    return out


def reference(atoms, model):
    a = atoms.copy()
    a.calc = MLMDCalculator(model)
    periodic = bool(np.all(a.pbc))
    return a.get_potential_energy(), a.get_forces(), a.get_stress() if periodic else None


def check(res, ref):
    e, f, s = ref
    assert abs(res.energy - e) <= E_REL * abs(e), (res.energy, e)
    assert np.abs(res.forces - f).max() <= F_ABS
    if s is not None:
        assert np.abs(res.stress - s).max() <= S_ABS
    np.testing.assert_allclose(res.energies.sum(), res.energy, rtol=1e-10)  # pe/atom includes kspace and D3


@pytest.mark.parametrize("nprocs", [1, 2])
def test_coulomb_and_d3_match_ase(models, nprocs):
    atoms = water_box(3, seed=5)
    model = models["pbe"]
    lines = L.pair_lines(model, natoms=len(atoms))
    assert lines[0].startswith("pair_style hybrid/overlay mlmd ")
    assert lines[0].endswith(" coul/long 8.0")  # D3 inside pair_style mlmd (tests/test_lammps_d3.py)
    assert not any("dispersion/d3" in line for line in lines)
    assert "kspace_style    ewald 1e-06" in lines and "pair_modify     pair coul/long table 16" in lines
    assert "set             type 2 charge -0.8  # O" in lines
    res = L.compute(atoms, model, nprocs=nprocs)
    check(res, reference(atoms, model))
    # without the long-range part LAMMPS would be far off: the terms are large here
    short = L.compute(atoms, model, pair_lines_override=[f"pair_style mlmd {model}", "pair_coeff * * H O"])
    assert abs(short.energy - res.energy) > 100.0


def test_pppm_triclinic(models):
    atoms = water_box(3, seed=6)
    cell = atoms.cell.array.copy()
    cell[1, 0] += 1.3
    cell[2, 1] -= 0.9
    atoms = Atoms(atoms.numbers, scaled_positions=atoms.get_scaled_positions(), cell=cell, pbc=True)
    model = models["coulomb"]
    lines = L.pair_lines(model, natoms=10**6)  # large systems: PPPM, as the model switches to PME
    assert "kspace_style    pppm 1e-06" in lines
    check(L.compute(atoms, model, pair_lines_override=lines), reference(atoms, model))


def test_cluster_direct_coulomb(models):
    box = water_box(2, seed=7, spacing=3.4)
    cluster = Atoms(box.numbers, positions=box.positions)
    res = L.compute(cluster, models["pbe"])
    assert "coul/cut" in res.log and "kspace_style" not in res.log
    check(res, reference(cluster, models["pbe"]))


def lammps_input_energy(model, atoms, tmp_path, capsys) -> tuple[str, float]:
    """`mlmd lammps-input` for atoms (its data file beside), the lines run as written (run 0): (the lines, pe)."""
    from mlmd.cli import main

    xyz = tmp_path / "w.xyz"
    atoms.write(xyz)
    assert main(["lammps-input", str(model), "--structure", str(xyz), "--data", str(tmp_path / "w.data")]) == 0
    text = capsys.readouterr().out
    script = "\n".join(line for line in text.splitlines() if not line.startswith("# wrote"))
    script = script.replace("# after it", f"read_data {tmp_path / 'w.data'}\n# after it")
    tail = "\nthermo_style custom step pe\nthermo_modify format float %.15g\nrun 0\n"
    (tmp_path / "in.lines").write_text(script + tail)
    log = L.run_lammps(tmp_path / "in.lines", tmp_path)
    return text, float(re.search(r"^\s+0\s+(\S+)\s*$", log, re.M).group(1))


def test_lammps_input_runs(models, tmp_path, capsys):
    model = models["pbe"]
    atoms = water_box(3, seed=8)
    text, pe = lammps_input_energy(model, atoms, tmp_path, capsys)
    assert "atom_style      charge" in text and "Atoms  # charge" in (tmp_path / "w.data").read_text()
    e = reference(atoms, model)[0]
    assert abs(pe - e) <= E_REL * abs(e)


def _without_d3_entry(card):
    """The card of a file packaged before the D3 graph entry (LAMMPS then runs D3 through dispersion/d3)."""
    new = (K.ENTRY_LOCAL_DISPERSION, K.ENTRY_LOCAL_DISPERSION_TAIL)
    return replace(card, entry_points=[e for e in card.entry_points if e not in new]).validate()


def test_what_lammps_cannot_run(models, monkeypatch):
    atm = L.model_card(models["atm"])
    old_atm = replace(atm, entry_points=[e for e in atm.entry_points if e != K.ENTRY_LOCAL_DISPERSION_ATM]).validate()
    with monkeypatch.context() as m:  # an ATM file packaged before its graph entry (newer ones run: test_lammps_d3)
        m.setattr(L.inputs, "model_card", lambda model: old_atm)
        with pytest.raises(ValueError, match="three-body.*repackage"):
            L.pair_lines(models["atm"])
    for name in ("gfn2", "smooth", "atm"):  # the model's own D3 runs inside pair_style mlmd
        assert not any("dispersion/d3" in line for line in L.pair_lines(models[name]))
    # files packaged before the D3 graph entry: only what dispersion/d3 computes
    old = {str(models[k]): _without_d3_entry(L.model_card(models[k])) for k in ("gfn2", "smooth", "coulomb")}
    with monkeypatch.context() as m:
        m.setattr(L.inputs, "model_card", lambda model: old[str(model)])
        with pytest.raises(ValueError, match=r"dispersion/d3 takes only a functional name .* no 'gfn2'"):
            L.pair_lines(models["gfn2"])
        with pytest.raises(ValueError, match="smooth cutoff .* tail correction"):
            L.pair_lines(models["smooth"])
    with pytest.raises(ValueError, match="bundled scripts"):
        run_md(models["coulomb"], engine="lammps", steps=1, echo=False)
    card = L.model_card(models["coulomb"])
    elec = replace(card.long_range.electrostatics, mode=K.CHARGES_PREDICTED)
    # a predicted-charge file packaged before the local_charges entry (newer ones run: test_lammps_charges.py)
    card = replace(card, long_range=replace(card.long_range, electrostatics=elec), charges_mode=K.CHARGES_PREDICTED,
                   entry_points=[e for e in card.entry_points if e != K.ENTRY_LOCAL_CHARGES])
    # pair_lines looks model_card up in mlmd.engines.lammps.inputs (the package only re-exports it): patch it there
    monkeypatch.setattr(L.inputs, "model_card", lambda model: card.validate())
    with pytest.raises(ValueError, match="predicts its charges but was packaged without the local_charges entry"):
        L.pair_lines(models["coulomb"])
