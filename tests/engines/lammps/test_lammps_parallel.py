"""pair_style mlmd over MPI ranks, `parallel layers`: each rank computes its own atoms' messages and the ghost
atoms' features are exchanged between layers. Everything must equal the ASE calculator (one call on the whole
periodic system, its own graph) to 1e-10 relative in float64, on 1, 2, 4 and 8 ranks (ranks may outnumber
cores), in the awkward cases: triclinic boxes, boxes smaller than 2 r_cut, empty subdomains, `processors 4 1 1`,
hybrid/overlay with NULL types, committees with compute mlmd/uncertainty, restarts; and an NVE trajectory on
4 ranks follows the 1-rank one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lammps import assert_matches, reference, triclinic_water

from conftest import make_potential, water_box, with_card_changes
from mlmd import keys as K
from mlmd.deploy.export import package
from mlmd.engines import lammps as L
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.ensemble import EnsemblePotential

pytestmark = pytest.mark.lammps
GRIDS = {1: [], 2: ["processors 2 1 1"], 4: ["processors 2 2 1"], 8: ["processors 2 2 2"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parallel")
    out = {"three": d / "three_layers.pt", "committee": d / "committee.pt"}
    # 3 layers of 3 Å: a local energy sees 9 Å, further than a subdomain is wide
    package(make_potential(dtype=torch.float64, r_cut=3.0, n_layers=3, seed=11), out["three"])
    package(EnsemblePotential([make_potential(seed=k, r_cut=3.0) for k in (21, 22, 23)]), out["committee"])
    return out


SPLIT = "each pair computed on one rank"


def mode_of(log: str) -> str:
    found = re.search(r"pair_style mlmd: parallel (\w+)", log)
    assert found, "the pair style logs the mode it chose"
    return found.group(1)


def check(atoms, model, tmp_path, nprocs, grid=None, split=True, **kw) -> L.LammpsResult:
    ref = reference(atoms, model)
    res = L.compute(atoms, model, nprocs=nprocs, header_lines=GRIDS[nprocs] if grid is None else grid,
                    workdir=tmp_path / f"np{nprocs}", **kw)
    assert mode_of(res.log) == ("local" if nprocs == 1 else "layers")
    # files with layer_messages/layer_update compute each pair across subdomains on one rank
    assert (SPLIT in res.log) == (split and nprocs > 1)
    if nprocs > 1:  # only the rows some graph reads travel (folded images and ghosts beyond r_cut stay)
        moved = re.search(r"feature exchanges move (\d+) of the (\d+) ghost atoms' rows", res.log)
        assert moved and 0 < int(moved.group(1)) < int(moved.group(2))
    assert_matches(res, ref, rtol=1e-10, atol_f=1e-10)
    np.testing.assert_allclose(res.stress, ref["stress"], rtol=0, atol=1e-10 * np.abs(ref["stress"]).max())
    return res


@pytest.mark.parametrize("nprocs", [1, 2, 4, 8])
def test_ranks_match_ase(models, tmp_path, nprocs):
    """81 atoms, 9.3 Å box, 3 layers of 3 Å: on 8 ranks a subdomain is 4.65 Å wide, half the interaction range."""
    atoms = water_box(3, seed=5)
    atoms.rattle(0.05, seed=1)
    check(atoms, models["three"], tmp_path, nprocs)


@pytest.mark.parametrize("nprocs", [2, 4])
def test_float32_model_exchanges_float32_values(models, tmp_path, nprocs):
    """A float32 model's features, messages and their gradients travel as float32 (two to one of LAMMPS's doubles):
    ASE to float32 round-off, 3 layers on small subdomains so that every exchange carries values."""
    model = tmp_path / "three_f32.pt"
    package(make_potential(dtype=torch.float32, r_cut=3.0, n_layers=3, seed=11), model)
    atoms = water_box(3, seed=5)
    atoms.rattle(0.05, seed=1)
    ref = reference(atoms, model)
    res = L.compute(atoms, model, nprocs=nprocs, header_lines=GRIDS[nprocs], workdir=tmp_path / "run")
    assert mode_of(res.log) == "layers" and SPLIT in res.log
    assert_matches(res, ref, rtol=2e-6, atol_f=2e-5 * np.abs(ref["forces"]).max())
    assert np.abs(ref["forces"]).max() > 1e-3


@pytest.mark.parametrize("nprocs", [4, 8])
def test_triclinic_box(models, tmp_path, nprocs):
    atoms = triclinic_water().repeat((2, 1, 1))
    check(atoms, models["three"], tmp_path, nprocs)


def test_small_box_thin_slabs_and_empty_subdomains(models, tmp_path):
    """24 atoms in a 6.2 Å box (smaller than 2 r_cut = 6 Å? close: 3 layers reach 9 Å, every neighbour's
    neighbour is an image) on `processors 4 1 1` and 8 1 1: slabs 1.55 and 0.78 Å thin, some of them empty."""
    atoms = water_box(2, seed=9)
    res4 = check(atoms, models["three"], tmp_path / "4", 4, grid=["processors 4 1 1"])
    assert "4 by 1 by 1 MPI processor grid" in res4.log
    res8 = check(atoms, models["three"], tmp_path / "8", 8, grid=["processors 8 1 1"])
    assert re.search(r"Nlocal:.*min", res8.log)
    assert re.search(r"Nlocal:\s+\S+ ave\s+\d+ max\s+0 min", res8.log), "a rank should own no atoms"


@pytest.mark.parametrize("nprocs", [2, 4])
def test_files_without_split_layer_entries(models, tmp_path, nprocs):
    """A file packaged before layer_messages/layer_update (its card lists only the older layer entries) runs the
    previous layers path, where a rank computes every edge into its own atoms: the same numbers."""
    listed = [e for e in L.model_card(models["three"]).entry_points if e not in K.SPLIT_LAYER_ENTRY_POINTS]
    old = with_card_changes(models["three"], tmp_path / "old.pt", **{K.CARD_ENTRY_POINTS: listed})
    atoms = water_box(3, seed=7)
    atoms.rattle(0.05, seed=2)
    check(atoms, old, tmp_path, nprocs, split=False)


def test_layers_equal_halo(models, tmp_path):
    """The two parallel modes (forced by the keyword) give the same numbers on 4 ranks."""
    atoms = water_box(3, seed=6)
    model = models["three"]
    names = L.model_elements(model)
    runs = {}
    for mode in ("layers", "halo"):
        runs[mode] = L.compute(atoms, model, nprocs=4, header_lines=GRIDS[4], workdir=tmp_path / mode,
                               pair_lines_override=[f"pair_style mlmd {model} parallel {mode}",
                                                    f"pair_coeff * * {' '.join(names)}"])
        assert mode_of(runs[mode].log) == mode
    a, b = runs["layers"], runs["halo"]
    assert abs(a.energy - b.energy) <= 1e-12 * abs(a.energy)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-11)
    np.testing.assert_allclose(a.atom_virials, b.atom_virials, rtol=0, atol=1e-11)
    # the halo mode needs ghosts out to 3 x 3 Å + skin (1 Å); layers only the pair cutoff + skin
    assert "ghost cutoff set to 10 Å" in b.log and "ghost cutoff set" not in a.log


def test_hybrid_overlay_null_types(models, tmp_path):
    """hybrid/overlay mlmd + zero with H as NULL: mlmd sees the oxygens only, on 4 ranks."""
    atoms = water_box(3, seed=7)
    model = models["three"]
    is_o = np.array([s == "O" for s in atoms.get_chemical_symbols()])
    ref = reference(atoms[is_o], model)
    res = L.compute(atoms, model, nprocs=4, header_lines=GRIDS[4], workdir=tmp_path,
                    pair_lines_override=[f"pair_style hybrid/overlay mlmd {model} zero 3.0",
                                         "pair_coeff * * mlmd NULL O", "pair_coeff * * zero"])
    assert mode_of(res.log) == "layers" and SPLIT in res.log
    assert abs(res.energy - ref["energy"]) < 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(res.forces[is_o], ref["forces"], rtol=0, atol=1e-10)
    assert np.all(res.forces[~is_o] == 0.0)


def test_committee_and_uncertainty_on_four_ranks(models, tmp_path):
    atoms = water_box(3, seed=8)
    atoms.rattle(0.05, seed=3)
    a = atoms.copy()
    a.calc = MLMDCalculator(models["committee"])
    a.get_forces()
    a.get_potential_energies()
    ref = a.calc.results
    res = L.compute(atoms, models["committee"], nprocs=4, header_lines=GRIDS[4], workdir=tmp_path, uncertainty=True)
    assert mode_of(res.log) == "layers" and SPLIT in res.log
    assert abs(res.energy - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-10)
    assert res.energy_std == pytest.approx(ref["energy_std"], rel=1e-8)
    np.testing.assert_allclose(res.forces_std, ref["forces_std"], rtol=1e-8, atol=0)
    np.testing.assert_allclose(res.energies_std, ref["energies_std"], rtol=1e-8, atol=0)
    assert ref["energy_std"] > 1e-3


# a water box with atom IDs on the rank grid {grid}, from data.lmp
WATER_HEADER = """\
units           metal
atom_style      atomic
atom_modify     map array
boundary        p p p
{grid}
read_data       data.lmp
"""
NVE = WATER_HEADER + """\
pair_style      hybrid/overlay mlmd {model} zbl 0.6 1.0
pair_coeff      * * mlmd {elements}
pair_coeff      1 1 zbl 1 1
pair_coeff      1 2 zbl 1 8
pair_coeff      2 2 zbl 8 8
mass            1 1.008
mass            2 15.999
velocity        all create 300.0 4928 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
thermo_style    custom step pe ke etotal
thermo_modify   format float %.15g
thermo          100
dump            d all custom 100 traj_{name}.txt id x y z
dump_modify     d sort id format float %.15g
{write_restart}
run             {steps}
"""


def _run_nve(tmp_path, model, nprocs, steps, name, write_restart=""):
    names = L.model_elements(model)
    L.write_data(water_box(3, seed=12), tmp_path / "data.lmp", names)
    text = NVE.format(grid="\n".join(GRIDS[nprocs]), model=model, elements=" ".join(names), name=name,
                      steps=steps, write_restart=write_restart)
    (tmp_path / f"in.{name}").write_text(text)
    return L.run_lammps(tmp_path / f"in.{name}", tmp_path, nprocs=nprocs, in_process=False)


def _frames(path: Path) -> list[np.ndarray]:
    lines = path.read_text().splitlines()
    frames, k = [], 0
    while k < len(lines):
        n = int(lines[k + 3])
        frames.append(np.array([[float(v) for v in line.split()] for line in lines[k + 9 : k + 9 + n]]))
        k += 9 + n
    return frames


@pytest.mark.parametrize("steps", [200, pytest.param(2000, marks=pytest.mark.long)])
def test_nve_trajectory_one_and_four_ranks(models, tmp_path, steps):
    """NVE (81 atoms, 0.5 fs): the 4-rank trajectory is the 1-rank one to round-off over the first 100 steps (chaos
    amplifies round-off later), and both conserve the energy. A ZBL wall under 1 Å keeps the random model's atoms
    from collapsing onto each other. 200 steps in the default run; 2,000 steps (atoms moving across subdomains for
    1 ps; minutes on 4 ranks over 2 cores) marked long, run by CI's second command."""
    model = models["three"]
    one = _run_nve(tmp_path, model, 1, steps, "one")
    four = _run_nve(tmp_path, model, 4, steps, "four")
    assert mode_of(one) == "local" and mode_of(four) == "layers"
    a, b = _frames(tmp_path / "traj_one.txt"), _frames(tmp_path / "traj_four.txt")
    assert len(a) == len(b) == steps // 100 + 1
    np.testing.assert_allclose(b[1][:, 1:], a[1][:, 1:], rtol=0, atol=1e-9)  # step 100, Å

    def etotal(log):
        rows = [line.split() for line in log.splitlines()]
        return np.array([float(r[3]) for r in rows if len(r) == 4 and r[0].isdigit()])

    e1, e4 = etotal(one), etotal(four)
    assert len(e1) == len(e4) == steps // 100 + 1
    assert abs(e4[1] - e1[1]) < 1e-9 * abs(e1[1])
    for e in (e1, e4):
        assert np.ptp(e) < 2e-3 * len(a[0])  # random model, small steps: no drift beyond a few meV/atom


def _straight_and_restarted(model, tmp_path, steps: int, ranks: tuple[int, int], style_options: str = ""):
    """`steps` straight on ranks[0] ranks, and steps/2, write_restart, read_restart on ranks[1] ranks (the restart
    alone restores pair_style mlmd), steps/2: the two logs and the two final dumps (id x y z vx vy vz)."""
    from test_restarts import DUMP, DYNAMICS, HEAD, SETUP

    names = L.model_elements(model)
    L.write_data(water_box(3, seed=13), tmp_path / "data.lmp", names)
    setup = SETUP.format(model=model, elements=" ".join(names))
    setup = setup.replace(f"mlmd {model}", f"mlmd {model}{style_options}")
    grid = "\n".join(GRIDS[ranks[0]]) + "\n"
    half = steps // 2
    (tmp_path / "in.straight").write_text(HEAD + grid + setup + DYNAMICS + f"run {steps}\n" + DUMP.format(name="a.txt"))
    (tmp_path / "in.first").write_text(HEAD + grid + setup + DYNAMICS + f"run {half}\nwrite_restart half.restart\n")
    (tmp_path / "in.second").write_text(HEAD + "read_restart half.restart\n" + DYNAMICS + f"run {half}\n"
                                        + DUMP.format(name="b.txt"))
    straight = L.run_lammps(tmp_path / "in.straight", tmp_path, nprocs=ranks[0])
    L.run_lammps(tmp_path / "in.first", tmp_path, nprocs=ranks[0])
    resumed = L.run_lammps(tmp_path / "in.second", tmp_path, nprocs=ranks[1])
    assert "restoring pair style mlmd from restart" in resumed
    return straight, resumed, np.loadtxt(tmp_path / "a.txt", skiprows=9), np.loadtxt(tmp_path / "b.txt", skiprows=9)


def test_restart_written_on_four_ranks_read_on_two(models, tmp_path):
    """50 steps on 4 ranks == 25 steps on 4 ranks, write_restart, read_restart on 2 ranks, 25 steps: positions
    and velocities to round-off."""
    straight, resumed, a, b = _straight_and_restarted(models["three"], tmp_path, 50, (4, 2))
    assert mode_of(straight) == "layers" and mode_of(resumed) == "layers"
    assert a.shape == (81, 7)
    np.testing.assert_allclose(b[:, 1:4], a[:, 1:4], rtol=0, atol=1e-9)
    np.testing.assert_allclose(b[:, 4:7], a[:, 4:7], rtol=0, atol=1e-8)


def test_restart_keeps_the_parallel_keyword(models, tmp_path):
    """`parallel halo` given before write_restart is what read_restart restores (auto would choose layers on 2
    ranks), and the resumed run matches the one that never stopped."""
    straight, resumed, a, b = _straight_and_restarted(models["three"], tmp_path, 20, (2, 2), " parallel halo")
    assert mode_of(straight) == "halo" and mode_of(resumed) == "halo"
    np.testing.assert_allclose(b[:, 1:7], a[:, 1:7], rtol=0, atol=1e-8)
