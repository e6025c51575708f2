"""pair_style mlmd ... domain warn|stop|off and compute mlmd/domain, on 1 and 2 MPI ranks.

As in workflows/test_domain.py: one H atom (ID 2) of a water box is pushed straight at its O (ID 1), everything else at
rest; the first step on which the pair is closer than 0.8 x the shortest training H-O distance is read from the
run's own dump (ASE minimum-image distance), and the warning, the stop and `fix halt` must name that step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from domain_scenario import LIMIT_HO, SPEED, TRAINING

from conftest import water_box, with_card_changes
from mlmd import keys as K
from mlmd.engines import lammps as L
from mlmd.engines.lammps.runner import run_lammps

pytestmark = pytest.mark.lammps
LEFT = "the configuration left the model's training domain"


def run(tmp_path: Path, model: Path, body: list[str], nprocs: int = 1, atoms: Atoms | None = None,
        style_args: str = "") -> tuple[str, list[np.ndarray], np.ndarray]:
    """The water box (training distances, repeated twice: 192 atoms, 12.4 Å) in LAMMPS with the H of ID 2 moving
    at SPEED Å/fs towards the O of ID 1; returns the log, the dumped positions of every step, the cell."""
    atoms = water_box(2).repeat(2) if atoms is None else atoms
    L.write_data(atoms, tmp_path / "data.lmp", ["H", "O"])
    u = atoms.positions[0] - atoms.positions[1]
    v = SPEED * 1000 * u / np.linalg.norm(u)  # Å/ps
    lines = ["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p", "newton on",
             "read_data data.lmp", f"pair_style mlmd {model} {style_args}", "pair_coeff * * H O",
             "group mover id 2", f"velocity mover set {v[0]} {v[1]} {v[2]} units box", "timestep 0.0005",
             "fix nve all nve", "dump d all custom 1 traj.dump id x y z",
             "dump_modify d sort id format float %.15g", *body]
    (tmp_path / "in.test").write_text("\n".join(lines) + "\n")
    log = run_lammps(tmp_path / "in.test", tmp_path, nprocs=nprocs, in_process=False)
    return log, read_dump(tmp_path / "traj.dump"), atoms.cell.array


def read_dump(path: Path) -> list[np.ndarray]:
    frames, lines = [], path.read_text().splitlines()
    k = 0
    while k < len(lines):
        n = int(lines[k + 3])
        rows = np.array([[float(v) for v in line.split()] for line in lines[k + 9 : k + 9 + n]])
        frames.append(rows[np.argsort(rows[:, 0]), 1:])
        k += 9 + n
    return frames


def first_step_below(frames: list[np.ndarray], cell: np.ndarray) -> int:
    for step, pos in enumerate(frames):
        if Atoms("OH", positions=pos[:2], cell=cell, pbc=True).get_distance(0, 1, mic=True) < LIMIT_HO:
            return step
    raise AssertionError("the run never left the domain")


@pytest.mark.parametrize("nprocs", [1, 2])
def test_warns_once_naming_the_step_and_atom_ids(domain_model, tmp_path, nprocs):
    log, frames, cell = run(tmp_path, domain_model, ["thermo 1", "run 16"], nprocs)
    step = first_step_below(frames, cell)
    assert step > 2 and log.count(LEFT) == 1, log[-3000:]
    line = next(x for x in log.splitlines() if LEFT in x)
    assert line.startswith(f"WARNING: pair_style mlmd: step {step}: "), line
    assert "atom IDs 1 (O) and 2 (H)" in line and f"closer than {LIMIT_HO:.3f} Å" in line, line
    assert f"{TRAINING['H-O']:.3f} Å" in line
    assert "training domain: pairs closer than" in log  # the limits, in the log at pair_style


@pytest.mark.parametrize("nprocs", [1, 2])
def test_stop_stops_at_that_step(domain_model, tmp_path, nprocs):
    (tmp_path / "ref").mkdir()
    _, frames, cell = run(tmp_path / "ref", domain_model, ["run 16"])
    step = first_step_below(frames, cell)
    with pytest.raises(L.LammpsError, match=rf"step {step}: {LEFT}: atom IDs 1 \(O\) and 2 \(H\).*stopped"):
        run(tmp_path, domain_model, ["run 16"], nprocs, style_args="domain stop")


@pytest.mark.parametrize("nprocs", [1, 2])
def test_fix_halt_on_the_compute(domain_model, tmp_path, nprocs):
    """With the pair's own check off, compute mlmd/domain and fix halt end the run on the step it leaves."""
    body = ["compute dom all mlmd/domain", "variable outside equal c_dom",
            "fix halt all halt 1 v_outside > 0.0 error soft", "thermo_style custom step pe c_dom c_dom[1] c_dom[3]",
            "thermo 1", "run 16"]
    log, frames, cell = run(tmp_path, domain_model, body, nprocs, style_args="domain off")
    step = first_step_below(frames, cell)
    assert LEFT not in log
    assert re.search(rf"Fix halt condition for fix-id halt met on step {step} with value", log), log[-2000:]
    assert len(frames) == step + 1  # no step after it
    rows = {int(r.split()[0]): [float(v) for v in r.split()[1:]] for r in log.splitlines()
            if re.fullmatch(r"\s*\d+(\s+[-+0-9.eE]+){4}\s*", r)}
    d = Atoms("OH", positions=frames[step][:2], cell=cell, pbc=True).get_distance(0, 1, mic=True)
    assert rows[step][2] == pytest.approx(LIMIT_HO / d, rel=1e-4)  # [1]: limit / distance of the closest pair
    assert rows[step][1] == pytest.approx(LIMIT_HO / d - 1, rel=1e-3)  # the scalar
    assert rows[0][1] == 0.0 and rows[0][2] < 1.0
    assert rows[0][3] == pytest.approx(abs(np.linalg.det(cell)) / 192, rel=1e-7)  # [3]: V / N (8 digits)


def test_in_domain_run_is_silent_and_volume_is_checked(domain_model, tmp_path):
    atoms = water_box(2).repeat(2)
    (tmp_path / "a").mkdir()
    log, _, _ = run(tmp_path / "a", domain_model, ["velocity mover set 0 0 0", "run 5"], atoms=atoms)
    assert LEFT not in log
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.92, scale_atoms=True)  # volume 0.78x; bonds still above their limits
    (tmp_path / "b").mkdir()
    log, _, _ = run(tmp_path / "b", domain_model, ["velocity mover set 0 0 0", "run 2"], atoms=squeezed)
    line = next(x for x in log.splitlines() if LEFT in x)
    assert "step 0:" in line and "volume per atom is" in line, line
    assert log.count(LEFT) == 1


def test_old_model_without_the_record_runs_with_a_note(model_files, domain_model, tmp_path):
    (tmp_path / "a").mkdir()
    log, _, _ = run(tmp_path / "a", model_files["float64"], ["run 16"], style_args="domain stop")
    assert LEFT not in log and "records no training domain" in log
    (tmp_path / "b").mkdir()
    with pytest.raises(L.LammpsError, match="compute mlmd/domain: the model card of .* records no training domain"):
        run(tmp_path / "b", model_files["float64"], ["compute dom all mlmd/domain", "thermo_style custom step c_dom",
                                                   "run 0"])


@pytest.mark.parametrize("edit, message", [
    ({"pair_min_distance": {"O-H": 1.0}}, r"training_domain.pair_min_distance': 'O-H' is not a pair"),
    ({"pair_min_distance": {"H-O": 9.0}}, r"training_domain.pair_min_distance\[H-O\]': 9 is not in"),
    ({"volume_per_atom": [12.0, 9.0]}, r"training_domain.volume_per_atom'"),
    ({"close_factor": "x"}, r"training_domain.close_factor': expected a finite number"),
])
def test_an_edited_record_is_refused_as_in_python(domain_model, tmp_path, edit, message):
    from mlmd.deploy.load import load_model
    from mlmd.engines.lammps import model_card

    raw = model_card(domain_model).training_domain.to_json()
    raw.update(edit)
    bad = with_card_changes(domain_model, tmp_path / "bad.pt", **{K.CARD_TRAINING_DOMAIN: raw})
    with pytest.raises(Exception, match="training_domain"):
        load_model(bad)
    with pytest.raises(L.LammpsError, match=message):
        run(tmp_path, bad, ["run 0"])


def test_mlmd_md_lammps_passes_the_domain_mode(domain_model, tmp_path):
    """`mlmd md --engine lammps` (the bundled in.water_nvt): warns by default, exit status 2 with --domain stop."""
    import ase.io

    from mlmd.cli import main

    squeezed = water_box(2).repeat(2)
    squeezed.set_cell(squeezed.cell * 0.92, scale_atoms=True)
    ase.io.write(tmp_path / "squeezed.xyz", squeezed)
    base = ["md", str(domain_model), "--engine", "lammps", "--structure", str(tmp_path / "squeezed.xyz"), "--steps",
            "2", "--log-every", "1", "--temperature", "10", "--output-dir", str(tmp_path)]
    assert main(base) == 0
    log = (tmp_path / "log.lammps").read_text()
    assert log.count(LEFT) == 1 and "step 0: " + LEFT in log
    assert main([*base, "--domain", "stop"]) == 2


def test_the_domain_mode_survives_a_restart(domain_model, tmp_path):
    """write_restart stores `domain stop`; read_restart alone restores it (the run then stops on leaving)."""
    (tmp_path / "a").mkdir()
    run(tmp_path / "a", domain_model, ["run 0", "write_restart r.bin"], style_args="domain stop")
    lines = ["units metal", "atom_modify map array", "newton on", "read_restart a/r.bin", "fix nve all nve",
             "run 16"]
    (tmp_path / "in.restart").write_text("\n".join(lines) + "\n")
    with pytest.raises(L.LammpsError, match=rf"step \d+: {LEFT}: atom IDs 1 \(O\) and 2 \(H\).*stopped"):
        run_lammps(tmp_path / "in.restart", tmp_path, in_process=False)
