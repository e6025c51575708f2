"""D3(BJ) dispersion from the packaged model inside pair_style mlmd (plugins/lammps/pair_mlmd_d3.cpp).

The model's own D3 (GFN2 damping with the smooth cutoff and the tail correction; a named functional with custom
s6/s8/a1/a2 and sharp cutoffs) must give what the ASE calculator gives from the whole periodic system -- energy,
forces, stress, per-atom energies and virials to 1e-10 -- on 1, 2 and 4 MPI ranks (subdomains narrower than the
D3 cutoffs, whose ghosts then reach cutoff + cutoff_cn), triclinic cells too. The D3 part LAMMPS adds is checked
on its own against simple-dftd3 (an independent implementation) where its settings allow (sharp cutoffs, no
tail). `mlmd lammps-input` writes plain `pair_style mlmd` for such files. The three-body (ATM) term runs there
too (each triple once, at its atom of lowest ID), equal to ASE on 1, 2 and 4 ranks; a file packaged before its
entry is refused with the way out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_lammps import assert_matches, reference, triclinic_water
from test_lammps_parallel import GRIDS, WATER_HEADER, _frames, _run_nve

import mlmd.engines.lammps as L
import mlmd.validate as V
from conftest import REPO, make_potential, water_box, with_card_changes
from mlmd import keys as K
from mlmd.deploy.export import package
from mlmd.model.longrange import CoulombTerm, DispersionTerm

pytestmark = pytest.mark.lammps

CUSTOM = {"s6": 0.9, "s8": 1.1, "a1": 0.45, "a2": 4.0}  # a2 in bohr
D3_MODELS = {
    "gfn2_tail": dict(functional="gfn2", cutoff=6.0, cutoff_cn=5.0, smooth_width=2.0, tail_correction=True),
    "custom_sharp": dict(functional="pbe", cutoff=7.0, cutoff_cn=6.0, **CUSTOM),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("d3")
    out = {}
    for name, kw in D3_MODELS.items():
        out[name] = d / f"{name}.pt"
        package(make_potential(seed=3), out[name], long_range=[DispersionTerm(atomic_numbers=[1, 8], **kw)])
    out["short"] = d / "short.pt"  # the same short-range model without D3
    package(make_potential(seed=3), out["short"])
    # ATM with its cutoff beyond the 81-atom box's half width (triples with periodic images of one atom), and the
    # same D3 without it
    for name, three_body in (("atm", True), ("atm_off", False)):
        out[name] = d / f"{name}.pt"
        package(make_potential(seed=3), out[name], long_range=[DispersionTerm(
            atomic_numbers=[1, 8], functional="pbe", three_body=three_body, cutoff=6.0, cutoff_cn=5.0,
            cutoff_three_body=7.0)])
    out["coulomb_gfn2"] = d / "coulomb_gfn2.pt"
    package(make_potential(seed=3), out["coulomb_gfn2"], long_range=[
        CoulombTerm({8: -0.8, 1: 0.4}, accuracy=1e-6),
        DispersionTerm(atomic_numbers=[1, 8], **D3_MODELS["gfn2_tail"])])
    return out


def run(atoms, model, nprocs, tmp_path, **kw) -> L.LammpsResult:
    res = L.compute(atoms, model, nprocs=nprocs, header_lines=GRIDS[nprocs], workdir=tmp_path / f"np{nprocs}", **kw)
    assert "pair_style mlmd: D3 dispersion from the model" in res.log
    assert ("halo of ghosts" in res.log) == (nprocs > 1)
    return res


def check(res: L.LammpsResult, ref: dict) -> None:
    assert_matches(res, ref, rtol=1e-10, atol_f=1e-10)
    np.testing.assert_allclose(res.stress, ref["stress"], rtol=0, atol=1e-10 * np.abs(ref["stress"]).max())


def test_cards_and_input_lines(models):
    for name in D3_MODELS:
        card = L.model_card(models[name])
        assert card.has_local_dispersion and card.provides(K.ENTRY_LOCAL_DISPERSION)
        lines = L.pair_lines(models[name])
        assert lines[:2] == [f"pair_style mlmd {models[name].resolve()}", "pair_coeff * * H O"]
        assert not any("dispersion/d3" in line for line in lines)
    lines = L.pair_lines(models["coulomb_gfn2"], natoms=81)
    assert lines[0] == f"pair_style hybrid/overlay mlmd {models['coulomb_gfn2'].resolve()} coul/long 8.0"
    assert not any("dispersion/d3" in line for line in lines)
    card = L.model_card(models["atm"])
    assert card.has_local_dispersion and card.provides(K.ENTRY_LOCAL_DISPERSION_ATM)
    assert L.pair_lines(models["atm"])[0] == f"pair_style mlmd {models['atm'].resolve()}"


def test_three_body_file_without_its_entry_is_refused(models, tmp_path):
    """An ATM file packaged before local_dispersion_atm: mlmd lammps-input and pair_style mlmd both refuse it
    (LAMMPS's dispersion/d3 has no ATM; silently dropping D3 would change the physics) and name the repackaging."""
    card = L.model_card(models["atm"])
    old = with_card_changes(models["atm"], tmp_path / "old_atm.pt",
                            entry_points=[e for e in card.entry_points if e != K.ENTRY_LOCAL_DISPERSION_ATM])
    assert not L.model_card(old).has_local_dispersion
    with pytest.raises(ValueError, match="three-body.*repackage"):
        L.pair_lines(old)
    atoms = water_box(2, seed=5)
    with pytest.raises(L.LammpsError, match="three-body.*repackage"):
        L.compute(atoms, old, nprocs=1, workdir=tmp_path / "run",
                  pair_lines_override=[f"pair_style mlmd {old.resolve()}", "pair_coeff * * H O"])


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_three_body_term_matches_ase(models, tmp_path, nprocs):
    """81 atoms, ATM cutoff 7 Å in a 9.3 Å box: on 4 ranks a triple's three atoms often sit on three ranks."""
    atoms = water_box(3, seed=5)
    atoms.rattle(0.05, seed=1)
    ref = reference(atoms, models["atm"])
    res = run(atoms, models["atm"], nprocs, tmp_path)
    assert "three-body (ATM) term from the model" in res.log
    check(res, ref)
    without = reference(atoms, models["atm_off"])  # the ATM term is really there
    assert abs(without["energy"] - ref["energy"]) > 1e-3
    assert np.abs(without["forces"] - ref["forces"]).max() > 1e-4


@pytest.mark.parametrize("nprocs", [1, 4])
def test_three_body_term_in_a_triclinic_cell_smaller_than_its_cutoff(models, tmp_path, nprocs):
    atoms = triclinic_water()
    check(run(atoms, models["atm"], nprocs, tmp_path), reference(atoms, models["atm"]))


@pytest.mark.parametrize("nprocs", [1, 2, 4])
@pytest.mark.parametrize("name", list(D3_MODELS))
def test_ranks_match_ase(models, tmp_path, name, nprocs):
    """81 atoms in a 9.3 Å box: on 4 ranks a subdomain is 4.65 Å wide, less than either D3 cutoff."""
    atoms = water_box(3, seed=5)
    atoms.rattle(0.05, seed=1)
    ref = reference(atoms, models[name])
    check(run(atoms, models[name], nprocs, tmp_path), ref)
    # the D3 term is really there (and large against the tolerance)
    short = reference(atoms, models["short"])
    assert abs(short["energy"] - ref["energy"]) > 1.0
    assert np.abs(short["stress"] - ref["stress"]).max() > 1e-3


def test_eight_ranks_narrower_than_the_cutoffs_in_every_direction(models, tmp_path):
    """`processors 2 2 2` on the 9.3 Å box: every subdomain is 4.65 Å wide in x, y and z, less than either D3
    cutoff, so each rank's D3 graph has ghosts on every side, several copies of the same atom among them (the
    CN exchange path on eight ranks)."""
    atoms = water_box(3, seed=5)
    atoms.rattle(0.05, seed=1)
    model = models["gfn2_tail"]
    res = run(atoms, model, 8, tmp_path)
    assert "coordination numbers exchanged between ranks" in res.log
    check(res, reference(atoms, model))


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_triclinic_cell_smaller_than_the_cutoffs(models, tmp_path, nprocs):
    """24 atoms, rotated sheared cell ~6 Å wide: the 6 Å two-body cutoff reaches several images of each atom."""
    atoms = triclinic_water()
    model = models["gfn2_tail"]
    check(run(atoms, model, nprocs, tmp_path), reference(atoms, model))


def test_several_ranks_exchange_the_coordination_numbers(models, tmp_path):
    """A file with local_dispersion_cn: on several ranks the ghosts' CN come from their owners, so the ghost shell
    stays at max(cutoff, cutoff_cn) + skin, and each pair across ranks is computed on one of them
    (local_dispersion_whole_pairs); a file without the whole-pairs entry computes such pairs half on each rank,
    one without the CN entries (its card as packaged before them) keeps the halo of cutoff + cutoff_cn, one
    without the by-hand entries takes the derivatives through autograd: all with the same numbers; one rank
    keeps the one call on the periodic graph."""
    model = models["gfn2_tail"]
    card = L.model_card(model)
    assert card.has_local_dispersion_cn
    split = (K.ENTRY_LOCAL_DISPERSION_CN, K.ENTRY_LOCAL_DISPERSION_GIVEN_CN)
    old = with_card_changes(model, tmp_path / "old.pt", entry_points=[e for e in card.entry_points if e not in split])
    assert L.model_card(old).has_local_dispersion and not L.model_card(old).has_local_dispersion_cn
    atoms = water_box(3, seed=5)
    atoms.rattle(0.05, seed=1)
    ref = reference(atoms, model)
    new = run(atoms, model, 2, tmp_path / "new")
    assert "coordination numbers exchanged between ranks, each pair across ranks on one rank" in new.log
    assert "so that D3 is exact" not in new.log  # no ghost shell beyond LAMMPS's own
    assert "through autograd" not in new.log  # the derivatives by hand (local_dispersion_by_hand)
    check(new, ref)
    # a file without the by-hand entries: the same split with the derivatives through autograd
    by_hand = (K.ENTRY_LOCAL_DISPERSION_CN_SLOPES, K.ENTRY_LOCAL_DISPERSION_BY_HAND)
    autograd = with_card_changes(model, tmp_path / "autograd.pt", entry_points=[
        e for e in card.entry_points if e not in by_hand])
    res = run(atoms, autograd, 2, tmp_path / "autograd")
    assert "computes D3's derivatives through autograd" in res.log
    check(res, ref)
    # a file without local_dispersion_whole_pairs: each pair across ranks half on each of its two ranks
    halves = with_card_changes(model, tmp_path / "halves.pt", entry_points=[
        e for e in card.entry_points if e != K.ENTRY_LOCAL_DISPERSION_WHOLE_PAIRS])
    both = run(atoms, halves, 2, tmp_path / "halves")
    assert "coordination numbers exchanged between ranks (a model file without local_dispersion_whole_pairs" in both.log
    check(both, ref)
    before = run(atoms, old, 2, tmp_path / "old")
    assert "out to cutoff + CN cutoff" in before.log and "so that D3 is exact" in before.log
    check(before, ref)
    one = run(atoms, model, 1, tmp_path / "one")
    assert "on the periodic graph" in one.log and "exchanged" not in one.log and "autograd" not in one.log
    check(one, ref)


def test_empty_subdomains(models, tmp_path):
    """24 atoms in the left half of a 12.4 Å long box on `processors 4 1 1`: two ranks own no atom but take part
    in the tail's sum over ranks."""
    from ase import Atoms

    small = water_box(2, seed=3)
    atoms = Atoms(small.numbers, positions=small.positions, cell=[12.4, 6.2, 6.2], pbc=True)
    model = models["gfn2_tail"]
    res = L.compute(atoms, model, nprocs=4, header_lines=["processors 4 1 1"], workdir=tmp_path)
    check(res, reference(atoms, model))


def test_d3_part_matches_simple_dftd3(models, tmp_path):
    """What LAMMPS adds for D3 (energy, forces, virial on 2 ranks) against simple-dftd3 with the same custom
    damping parameters and cutoffs (sharp, no tail: what simple-dftd3 computes)."""
    pytest.importorskip("dftd3.interface")
    from dftd3_reference import reference as simple_dftd3

    atoms = water_box(3, seed=9)
    atoms.rattle(0.05, seed=2)
    with_d3 = run(atoms, models["custom_sharp"], 2, tmp_path / "d3")
    short = L.compute(atoms, models["short"], nprocs=2, header_lines=GRIDS[2], workdir=tmp_path / "short")
    kw = D3_MODELS["custom_sharp"]
    cutoffs = {"cutoff": kw["cutoff"], "cutoff_cn": kw["cutoff_cn"], "cutoff_three_body": 0.0}
    e, f, s = simple_dftd3(atoms, {**CUSTOM, "s9": 0.0}, cutoffs)
    assert abs(e) > 0.1
    assert abs(with_d3.energy - short.energy - e) < 1e-7
    assert np.abs(with_d3.forces - short.forces - f).max() < 1e-7
    voigt = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # ASE's order xx yy zz yz xz xy
    assert np.abs(with_d3.stress - short.stress - voigt).max() * atoms.get_volume() < 1e-7


def test_dispersion_d3_beside_it_is_refused(models, tmp_path):
    model = models["gfn2_tail"]
    lines = [f"pair_style hybrid/overlay mlmd {model} dispersion/d3 bj pbe 6.0 5.0", "pair_coeff * * mlmd H O",
             "pair_coeff * * dispersion/d3 H O"]
    with pytest.raises(L.LammpsError, match="count dispersion twice"):
        L.compute(water_box(2, seed=1), model, pair_lines_override=lines, workdir=tmp_path)


def test_hybrid_with_coulomb_matches_ase(models, tmp_path):
    """coul/long + kspace beside it: LAMMPS's Ewald sums to its accuracy (1e-6), the rest exactly."""
    atoms = water_box(3, seed=5)
    model = models["coulomb_gfn2"]
    ref = reference(atoms, model)
    res = run(atoms, model, 2, tmp_path)
    assert abs(res.energy - ref["energy"]) <= 1e-6 * abs(ref["energy"])
    assert np.abs(res.forces - ref["forces"]).max() <= 1e-4


def test_files_without_the_entry_keep_dispersion_d3(models, monkeypatch):
    """A card without local_dispersion (files packaged before it) gets LAMMPS's dispersion/d3, or its refusal."""
    card = L.model_card(models["custom_sharp"])
    old = [e for e in card.entry_points if e not in (K.ENTRY_LOCAL_DISPERSION, K.ENTRY_LOCAL_DISPERSION_TAIL)]
    standard = replace(card.long_range.dispersion, s6=1.0, s8=0.7875, a1=0.4289, a2=4.4407)
    cards = {"custom": replace(card, entry_points=old),
             "pbe": replace(card, entry_points=old, long_range=replace(card.long_range, dispersion=standard))}
    monkeypatch.setattr(L.inputs, "model_card", lambda model: cards[model].validate())
    assert not cards["pbe"].has_local_dispersion
    assert " dispersion/d3 bj pbe " in L.pair_lines("pbe")[0]
    with pytest.raises(ValueError, match="modified damping parameters"):
        L.pair_lines("custom")
    assert V.tolerances(cards["pbe"]).energy == 1e-6  # LAMMPS's D3 constants
    assert V.tolerances(card).energy == 1e-9  # the model's own D3 everywhere


@pytest.mark.openmm
@pytest.mark.parametrize("name", ["gfn2_tail", "atm"])
def test_validate_passes_for_a_d3_model(models, capsys, name):
    from mlmd.cli import main

    assert main(["validate", str(models[name])]) == 0
    out = capsys.readouterr().out
    for engine in ("openmm", "lammps 1 rank", "lammps 2 ranks", "lammps 4 ranks"):
        assert any(line.startswith(engine) and line.endswith(" ok") for line in out.splitlines()), engine


def test_bundled_hybrid_model_repackaged_runs_in_lammps(tmp_path):
    """The bundled hybrid water model (GFN2-damped D3, packaged before the graph entry) is refused by
    dispersion/d3; `mlmd package` gives it the entry (its D3 rebuilt from the card, every buffer checked equal),
    and LAMMPS then runs it -- coul/long + kspace beside pair_style mlmd -- on 1 and 2 ranks as ASE does."""
    import torch

    from mlmd.deploy.export import repackage
    from mlmd.deploy.load import load_model

    bundled = REPO / "tests" / "data" / "water_model_hybrid_before_d3_entry.pt"  # the hybrid bundled until then
    assert not L.model_card(bundled).has_local_dispersion
    with pytest.raises(ValueError, match=r"no 'gfn2'.*mlmd package .* -o NEW.pt"):
        L.pair_lines(bundled)
    new = tmp_path / "hybrid.pt"
    card = repackage(bundled, new)
    assert card.has_local_dispersion and card.charges_mode == K.CHARGES_FIXED
    assert card.long_range == L.model_card(bundled).long_range
    atoms = water_box(4, seed=5)
    args = (torch.tensor(atoms.positions, dtype=torch.float32), torch.tensor(atoms.cell.array, dtype=torch.float32),
            torch.tensor(atoms.numbers), torch.tensor([True] * 3), True)
    a, b = load_model(bundled)[0].compute(*args), load_model(new)[0].compute(*args)
    # the same model to float32 round-off: the D3 compiled into the new file sums its ~100 pair terms per atom in
    # another order, so a value may move by some float32 steps of the largest value of its kind; and the new file
    # is no farther than the old one from the same weights evaluated in float64
    exact = load_model(new)[0].double().compute(*(x.double() if x.is_floating_point() else x for x in args[:4]), True)
    for key in ("energy", "forces", "stress"):
        step = torch.finfo(torch.float32).eps * float(a[key].abs().max())
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=16 * step)
        err_old, err_new = ((x[key].double() - exact[key]).abs().max() for x in (a, b))
        assert err_new <= 1.05 * err_old + step, (key, float(err_new), float(err_old))
    ref = reference(atoms, new)
    tol = V.tolerances(card)
    for nprocs in (1, 2):
        res = run(atoms, new, nprocs, tmp_path)
        assert abs(res.energy - ref["energy"]) <= tol.energy * abs(ref["energy"])
        assert np.abs(res.forces - ref["forces"]).max() <= tol.forces * np.abs(ref["forces"]).max() + tol.forces_abs


def test_nve_one_and_four_ranks(models, tmp_path):
    """200 steps of NVE with the smooth-cutoff D3 and its tail: the 4-rank trajectory is the 1-rank one to
    round-off at step 100, and both conserve the energy (the smooth cutoff: no jumps as pairs cross it)."""
    model = models["gfn2_tail"]
    one = _run_nve(tmp_path, model, 1, 200, "one")
    four = _run_nve(tmp_path, model, 4, 200, "four")
    assert "halo of ghosts" in four and "halo of ghosts" not in one
    a, b = _frames(tmp_path / "traj_one.txt"), _frames(tmp_path / "traj_four.txt")
    np.testing.assert_allclose(b[1][:, 1:], a[1][:, 1:], rtol=0, atol=1e-9)  # step 100, Å

    def etotal(log):
        rows = [line.split() for line in log.splitlines()]
        return np.array([float(r[3]) for r in rows if len(r) == 4 and r[0].isdigit()])

    e1, e4 = etotal(one), etotal(four)
    assert len(e1) == len(e4) == 3
    assert abs(e4[1] - e1[1]) < 1e-9 * abs(e1[1])
    for e in (e1, e4):
        assert np.ptp(e) < 2e-3 * len(a[0])


STALE_LIST_NVE = WATER_HEADER + """\
pair_style      mlmd {model}
pair_coeff      * * {elements}
mass            1 1.008
mass            2 15.999
neighbor        2.0 bin
neigh_modify    every 1000 delay 0 check no
velocity        all create 600.0 4928 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
thermo_style    custom step pe
thermo_modify   format float %.15g
thermo          40
dump            d all custom 40 traj.txt id x y z fx fy fz
dump_modify     d sort id format float %.15g
run             40
"""


@pytest.mark.parametrize("nprocs", [1, 2])
def test_short_range_graph_from_the_list_cut_at_its_last_build(models, tmp_path, nprocs):
    """With D3 inside, LAMMPS's list reaches D3's 6 Å and the short-range graph (r_cut 3.5 Å) reads that list cut to
    r_cut + skin when LAMMPS last built it (PairMLMD::build_graph). 40 NVE steps on the list of step 0 (no rebuild):
    pairs have crossed r_cut since, and energy and forces at step 40 are still ASE's at those positions."""
    model = models["gfn2_tail"]
    names = L.model_elements(model)
    atoms = water_box(3, seed=12)
    L.write_data(atoms, tmp_path / "data.lmp", names)
    (tmp_path / "in.nve").write_text(STALE_LIST_NVE.format(grid="\n".join(GRIDS[nprocs]), model=model,
                                                          elements=" ".join(names)))
    log = L.run_lammps(tmp_path / "in.nve", tmp_path, nprocs=nprocs, in_process=False)
    assert "Neighbor list builds = 0" in log
    first, last = _frames(tmp_path / "traj.txt")
    order = np.argsort(last[:, 0])
    moved = atoms.copy()
    moved.positions = last[order, 1:4]

    r_cut = L.model_card(model).r_cut

    def pairs(a):
        from ase.neighborlist import neighbor_list

        i, j, shift = neighbor_list("ijS", a, r_cut)
        return {(int(p), int(q), *map(int, s)) for p, q, s in zip(i, j, shift)}

    start = atoms.copy()
    start.positions = first[np.argsort(first[:, 0]), 1:4]
    assert pairs(start) != pairs(moved)  # the short-range graph changed since the list was built
    ref = reference(moved, model)
    pe = [float(line.split()[1]) for line in log.splitlines() if line.split()[:1] == ["40"]][-1]
    assert abs(pe - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(last[order, 4:7], ref["forces"], rtol=0, atol=1e-9)
