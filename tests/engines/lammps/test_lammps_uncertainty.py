"""compute mlmd/uncertainty: a committee's spread during LAMMPS runs, against the ASE calculator and the members
evaluated one by one; on 1 and 2 MPI ranks (member forces on ghost atoms must reach their owners); in thermo
output, variables and fix halt; and the dynamics unchanged by it.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_potential, water_box
from mlmd.deploy import export
from mlmd.deploy.export import package
from mlmd.deploy.packaged import PackagedModel
from mlmd.engines import lammps as L
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.ensemble import EnsemblePotential

pytestmark = pytest.mark.lammps
N_MEMBERS = 3


class _CommitteeWithoutMemberEntry(PackagedModel):
    """A committee file as `mlmd package` wrote them before local_energies_of_member existed."""

    @torch.jit.export
    def local_member_energies(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
    ) -> torch.Tensor:
        return self.potential.member_energies(species, edge_index, edge_vectors)[:, :n_local]


@pytest.fixture(scope="module")
def committee(tmp_path_factory) -> Path:
    """committee.pt (3 random float64 H/O members), the members alone, and the same committee in the older layout."""
    d = tmp_path_factory.mktemp("lmp_committee")
    package(EnsemblePotential([make_potential(seed=k) for k in range(N_MEMBERS)]), d / "committee.pt")
    for k in range(N_MEMBERS):
        package(make_potential(seed=k), d / f"member_{k}.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "package_class", lambda potential: _CommitteeWithoutMemberEntry)
        package(EnsemblePotential([make_potential(seed=k) for k in range(N_MEMBERS)]), d / "committee_older.pt")
    return d


def ase_results(atoms, model: Path) -> dict:
    a = atoms.copy()
    a.calc = MLMDCalculator(model)
    a.get_forces()
    a.get_potential_energies()
    return dict(a.calc.results)


def assert_spread_matches(res: L.LammpsResult, ref: dict, rtol: float = 1e-8) -> None:
    assert res.energy_std == pytest.approx(ref["energy_std"], rel=rtol, abs=0)
    np.testing.assert_allclose(res.forces_std, ref["forces_std"], rtol=rtol, atol=0)
    assert res.forces_std_max == pytest.approx(ref["forces_std"].max(), rel=rtol, abs=0)
    assert res.forces_std_mean == pytest.approx(ref["forces_std"].mean(), rel=rtol, abs=0)
    np.testing.assert_allclose(res.energies_std, ref["energies_std"], rtol=rtol, atol=0)
    # the dynamics still runs on the committee mean
    assert abs(res.energy - ref["energy"]) <= 1e-12 * abs(ref["energy"])
    np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-11)
    assert ref["energy_std"] > 1e-3 and ref["forces_std"].min() > 1e-5  # the members really disagree


@pytest.mark.parametrize("nprocs", [1, 2])
def test_spread_matches_ase(committee, tmp_path, nprocs):
    """24 atoms in a 6.2 Å box; on 2 ranks each rank's graph has ghost atoms owned by the other rank."""
    atoms = water_box(2, seed=3)
    atoms.rattle(0.05, seed=1)
    ref = ase_results(atoms, committee / "committee.pt")
    res = L.compute(atoms, committee / "committee.pt", nprocs=nprocs, uncertainty=True, workdir=tmp_path,
                    header_lines=["processors 2 1 1"] if nprocs == 2 else [])
    if nprocs == 2:
        assert "2 by 1 by 1 MPI processor grid" in res.log
    assert_spread_matches(res, ref)


def test_older_committee_files_use_local_member_energies(committee, tmp_path):
    """Files without local_energies_of_member: the plugin differentiates each row of local_member_energies()."""
    atoms = water_box(2, seed=4)
    atoms.rattle(0.05, seed=2)
    ref = ase_results(atoms, committee / "committee.pt")
    res = L.compute(atoms, committee / "committee_older.pt", nprocs=2, uncertainty=True, workdir=tmp_path,
                    header_lines=["processors 2 1 1"])
    assert "parallel halo" in res.log  # no layer entries either: the one-call halo
    assert_spread_matches(res, ref)


def _thermo(log: str) -> tuple[list[str], np.ndarray]:
    lines = log.splitlines()
    start = max(k for k, line in enumerate(lines) if line.split()[:1] == ["Step"])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("Loop time"):
            break
        if not line.startswith("Fix halt condition"):  # fix halt's message sits among the rows
            rows.append([float(v) for v in line.split()])
    return lines[start].split(), np.array(rows)


RUN = """\
units           metal
atom_style      atomic
atom_modify     map array
newton          on
read_data       data.lmp
{pair}
neighbor        1.0 bin
timestep        0.0005
velocity        all create 600.0 4928459 mom yes rot no dist gaussian
fix             nve all nve
{extra}
thermo_style    custom step pe {columns}
thermo_modify   format float %.17g
thermo          {every}
run             {steps}
"""


def _run(tmp_path: Path, name: str, model: Path, atoms, steps: int = 0, every: int = 1, extra: str = "",
         columns: str = "") -> str:
    d = tmp_path / name
    d.mkdir()
    L.write_data(atoms, d / "data.lmp", L.model_elements(model))
    script = d / "in.run"
    script.write_text(RUN.format(pair="\n".join(L.pair_lines(model)), extra=extra, columns=columns, every=every,
                                 steps=steps))
    return L.run_lammps(script, d)


def test_group_spread_against_members_one_by_one(committee, tmp_path):
    """`compute ID oxygens mlmd/uncertainty`: energy std of the oxygens' summed member energies, force std over
    the oxygens, zeros for the other atoms; the reference evaluates each member file alone in ASE."""
    atoms = water_box(2, seed=5)
    atoms.rattle(0.05, seed=3)
    per = [ase_results(atoms, committee / f"member_{k}.pt") for k in range(N_MEMBERS)]
    e_k = np.array([r["energies"] for r in per])  # [K, N]
    f_k = np.array([r["forces"] for r in per])  # [K, N, 3]
    is_o = np.array(atoms.get_chemical_symbols()) == "O"
    f_std = np.sqrt(((f_k - f_k.mean(0)) ** 2).sum(2).mean(0))
    e_std = e_k.std(0)
    extra = "group oxygens type 2\ncompute unc oxygens mlmd/uncertainty\n" \
            "dump d all custom 1 unc.dump id c_unc[1] c_unc[2]\ndump_modify d sort id format float %.17g"
    log = _run(tmp_path, "group", committee / "committee.pt", atoms, extra=extra,
               columns="c_unc c_unc[1] c_unc[2] c_unc[3]")
    head, t = _thermo(log)
    scalar, e_group, f_max, f_mean = t[0, 2:6]
    assert e_group == pytest.approx(e_k[:, is_o].sum(1).std(), rel=1e-8, abs=0)
    assert f_max == pytest.approx(f_std[is_o].max(), rel=1e-8, abs=0) and scalar == f_max
    assert f_mean == pytest.approx(f_std[is_o].mean(), rel=1e-8, abs=0)
    dump = np.loadtxt(tmp_path / "group" / "unc.dump", skiprows=9)
    np.testing.assert_allclose(dump[is_o, 1], f_std[is_o], rtol=1e-8, atol=0)
    np.testing.assert_allclose(dump[is_o, 2], e_std[is_o], rtol=1e-8, atol=0)
    assert np.all(dump[~is_o, 1:] == 0.0)


def test_dynamics_unchanged_and_fix_halt_stops_the_run(committee, tmp_path):
    """40 NVE steps: with the compute evaluated every 5 steps the trajectory is the same, bit for bit; then
    `fix halt 5 v_fmax > threshold` stops the run on the first check step whose max force std is above it."""
    model = committee / "committee.pt"
    atoms = water_box(2, seed=6)
    plain = _thermo(_run(tmp_path, "plain", model, atoms, steps=40, every=5))[1]
    watched = _thermo(_run(tmp_path, "watched", model, atoms, steps=40, every=5,
                           extra="compute unc all mlmd/uncertainty", columns="c_unc[1] c_unc[2]"))[1]
    assert np.array_equal(plain[:, :2], watched[:, :2])
    assert np.all(watched[:, 2] > 0) and np.all(watched[:, 3] > 0)

    # fix halt checks on steps 5, 10, ...: a threshold between the largest value before check j and the value at
    # check j (one that beats all before it) first trips on check j
    checks = watched[1:, 3]
    j = next((j for j in range(1, len(checks)) if checks[j] > checks[:j].max()), None)
    assert j is not None, f"no check step beats the ones before it: {checks}"
    threshold = float(0.5 * (checks[:j].max() + checks[j]))
    stop_step = 5 * (j + 1)
    extra = f"compute unc all mlmd/uncertainty\nvariable fmax equal c_unc[2]\n" \
            f"fix stop all halt 5 v_fmax > {threshold!r} error soft"
    log = _run(tmp_path, "halted", model, atoms, steps=40, every=5, extra=extra, columns="v_fmax")
    assert re.search(rf"Fix halt condition for fix-id stop met on step {stop_step} ", log), log[-1500:]
    head, halted = _thermo(log)
    assert halted[-1, 0] == stop_step < 40
    np.testing.assert_array_equal(halted[:, 1], watched[: j + 2, 1])
    assert halted[-1, 2] == watched[j + 1, 3] > threshold


@pytest.mark.parametrize(
    "case, message",
    [
        ("single", r"ho_float64.pt is not a committee model \(it has one member, so no spread\): train one with "
                   r"`mlmd train --ensemble K`"),
        ("lj", r"compute mlmd/uncertainty requires pair_style mlmd"),
    ],
)
def test_refused_without_a_committee(model_files, tmp_path, case, message):
    model = model_files["float64"]
    pair = "\n".join(L.pair_lines(model)) if case == "single" else "pair_style lj/cut 3.0\npair_coeff * * 0.01 1.2"
    d = tmp_path / case
    d.mkdir()
    L.write_data(water_box(1, seed=0), d / "data.lmp", ["H", "O"])
    (d / "in.run").write_text(RUN.format(pair=pair, extra="compute unc all mlmd/uncertainty", columns="c_unc[1]",
                                         every=1, steps=0))
    with pytest.raises(L.LammpsError, match=message):
        L.run_lammps(d / "in.run", d)


def test_md_engine_lammps_prints_the_committee_spread(committee, tmp_path, monkeypatch, capsys):
    """`mlmd md --engine lammps` with a committee: thermo columns e_std and f_std_max; step 0 is the input."""
    from mlmd.md import run_md

    monkeypatch.chdir(tmp_path)
    atoms = water_box(2, seed=7)
    atoms.write(tmp_path / "w.xyz")
    out = run_md(committee / "committee.pt", engine="lammps", structure=tmp_path / "w.xyz", steps=10, log_every=5)
    assert "committee spread: energy std up to" in capsys.readouterr().out
    head, t = _thermo((tmp_path / "log.lammps").read_text())
    ref = ase_results(atoms, committee / "committee.pt")
    assert t[0, head.index("e_std")] == pytest.approx(ref["energy_std"], rel=1e-6)
    assert t[0, head.index("f_std_max")] == pytest.approx(ref["forces_std"].max(), rel=1e-6)
    assert out["max_force_std"] == t[:, head.index("f_std_max")].max() > 0
    assert out["max_energy_std"] == t[:, head.index("e_std")].max() > 0
