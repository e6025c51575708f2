"""Restarts continue as if never stopped: LAMMPS restart files, OpenMM checkpoints and states, training killed
mid-epoch. The reference is always the same run done without the interruption."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, make_potential, water_box
from mlmd.deploy.export import package

# ------------------------------------------------------------------------------------------------------ LAMMPS

HEAD = """\
units           metal
atom_style      atomic
atom_modify     map array
newton          on
"""
SETUP = """\
read_data       data.lmp
pair_style      mlmd {model}
pair_coeff      * * {elements}
velocity        all create 300.0 4928459 mom yes rot no dist gaussian
"""
# neighbour lists rebuilt every 5 steps in both runs (the restarted run rebuilds at its first step too);
# the atoms are tethered (fix spring/self, whose anchors the restart file keeps) because a random-weight model
# has no repulsive core
DYNAMICS = """\
neighbor        1.0 bin
neigh_modify    every 5 delay 0 check no
timestep        0.0005
fix             1 all nve
fix             2 all spring/self 2.0
fix_modify      2 energy yes
thermo_style    custom step pe ke etotal
thermo_modify   format float %.17g
thermo          10
"""
DUMP = "write_dump all custom {name} id x y z vx vy vz modify sort id format float %.17g\n"


def _thermo(log: str) -> dict[int, list[float]]:
    rows = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit():
            rows[int(parts[0])] = [float(v) for v in parts[1:]]
    return rows


@pytest.mark.lammps
def test_lammps_restart_continues_the_trajectory(model_files, tmp_path):
    """100 steps straight == 50 steps, write_restart, read_restart in a fresh LAMMPS (no pair_style or
    pair_coeff given again: the restart file carries them), 50 steps."""
    from mlmd.engines import lammps as L

    model = model_files["float64"]
    names = L.model_elements(model)
    L.write_data(water_box(2, seed=8), tmp_path / "data.lmp", names)
    setup = SETUP.format(model=model, elements=" ".join(names))
    (tmp_path / "in.straight").write_text(HEAD + setup + DYNAMICS + "run 100\n" + DUMP.format(name="straight.txt"))
    (tmp_path / "in.first").write_text(HEAD + setup + DYNAMICS + "run 50\nwrite_restart half.restart\n")
    (tmp_path / "in.second").write_text(HEAD + "read_restart half.restart\n" + DYNAMICS + "run 50\n"
                                        + DUMP.format(name="resumed.txt"))
    straight = L.run_lammps(tmp_path / "in.straight", tmp_path)
    L.run_lammps(tmp_path / "in.first", tmp_path)
    resumed = L.run_lammps(tmp_path / "in.second", tmp_path)
    assert "restoring pair style mlmd from restart" in resumed
    a = np.loadtxt(tmp_path / "straight.txt", skiprows=9)
    b = np.loadtxt(tmp_path / "resumed.txt", skiprows=9)
    assert a.shape == (24, 7)
    np.testing.assert_allclose(b[:, 1:4], a[:, 1:4], rtol=0, atol=1e-10)  # Å
    np.testing.assert_allclose(b[:, 4:7], a[:, 4:7], rtol=0, atol=1e-9)  # Å/ps
    t_a, t_b = _thermo(straight), _thermo(resumed)
    assert sorted(t_b) == [50, 60, 70, 80, 90, 100]
    for step, row in t_b.items():
        np.testing.assert_allclose(row, t_a[step], rtol=1e-12, atol=1e-12, err_msg=f"step {step}")
    pe = [t_a[s][0] for s in sorted(t_a)]
    assert max(pe) - min(pe) > 0.1  # the model does work along the trajectory


def _restart_with_a_copy(model_files, tmp_path: Path) -> Path:
    """A copy of the float64 model in tmp_path, and r.restart written by a run 0 with it: the copy's path."""
    from mlmd.engines import lammps as L

    model = tmp_path / "model.pt"
    shutil.copy(model_files["float64"], model)
    L.write_data(water_box(2, seed=8), tmp_path / "data.lmp", ["H", "O"])
    (tmp_path / "in.first").write_text(HEAD + SETUP.format(model=model, elements="H O") + "run 0\n"
                                       "write_restart r.restart\n")
    L.run_lammps(tmp_path / "in.first", tmp_path)
    return model


@pytest.mark.lammps
def test_lammps_restart_with_a_missing_or_changed_model(model_files, tmp_path):
    """The restart file names the model and its weights checksum: a changed or missing file is not used
    silently; pair_style/pair_coeff after read_restart continue with whatever model is given."""
    from mlmd.engines import lammps as L

    model = _restart_with_a_copy(model_files, tmp_path)
    again = HEAD + "read_restart r.restart\n{lines}run 0\n"
    (tmp_path / "in.again").write_text(again.format(lines=""))
    (tmp_path / "in.given").write_text(again.format(lines=f"pair_style mlmd {model}\npair_coeff * * H O\n"))

    package(make_potential(dtype=torch.float64, seed=11), model)  # retrained in place
    with pytest.raises(L.LammpsError, match=r"model '.*model.pt' has changed since the restart was written.*"
                       r"give pair_style mlmd MODEL and pair_coeff after read_restart"):
        L.run_lammps(tmp_path / "in.again", tmp_path)
    assert "Step" in L.run_lammps(tmp_path / "in.given", tmp_path)
    model.unlink()
    with pytest.raises(L.LammpsError, match=r"model '.*model.pt' is not readable"):
        L.run_lammps(tmp_path / "in.again", tmp_path)


@pytest.mark.lammps
@pytest.mark.parametrize("damage", ["truncated", "noise", "tampered"])
def test_lammps_restart_with_a_corrupt_model(model_files, tmp_path, damage):
    """A model file that is still readable but no longer loads (truncated, overwritten, weights changed) leaves
    read_restart without a model and a warning, as a missing one does (not an abort at read_restart): the run
    says why, and pair_style/pair_coeff after read_restart continue."""
    from mlmd.engines import lammps as L

    model = _restart_with_a_copy(model_files, tmp_path)
    good = model_files["float64"]
    if damage == "truncated":
        model.write_bytes(good.read_bytes()[:4000])
        why = r"cannot read model file '.*model.pt': not a valid mlmd TorchScript archive \(corrupt or truncated\?\)"
    elif damage == "noise":
        model.write_bytes(os.urandom(6000))
        why = r"cannot read model file '.*model.pt': not a valid mlmd TorchScript archive \(corrupt or truncated\?\)"
    else:
        extra = {"mlmd_metadata.json": ""}
        module = torch.jit.load(str(good), _extra_files=extra)
        with torch.no_grad():
            next(iter(module.parameters())).view(-1)[0] += 1.0
        torch.jit.save(module, str(model), _extra_files={"mlmd_metadata.json": extra["mlmd_metadata.json"]})
        why = r"'.*model.pt': weights checksum mismatch"
    again = HEAD + "read_restart r.restart\n{lines}run 0\n"
    (tmp_path / "in.again").write_text(again.format(lines=""))
    (tmp_path / "in.given").write_text(again.format(lines=f"pair_style mlmd {good}\npair_coeff * * H O\n"))
    with pytest.raises(L.LammpsError, match=rf"no model loaded: the restart file's model cannot be used: {why}.*; "
                       r"give pair_style mlmd MODEL and pair_coeff after read_restart"):
        L.run_lammps(tmp_path / "in.again", tmp_path)
    log = L.run_lammps(tmp_path / "in.given", tmp_path)
    assert "WARNING: pair_style mlmd: the restart file's model" in log and "Step" in log


@pytest.mark.lammps
def test_lammps_restart_keeps_check_masses(model_files, tmp_path):
    """check_masses no (here for deuterium) is stored in the restart file: read_restart alone runs again."""
    from mlmd.engines import lammps as L

    L.write_data(water_box(2, seed=8), tmp_path / "data.lmp", ["H", "O"])
    model = model_files["float64"]
    setup = SETUP.format(model=f"{model} check_masses no", elements="H O").replace(
        "velocity", "mass            1 2.014\nvelocity")
    (tmp_path / "in.first").write_text(HEAD + setup + "run 0\nwrite_restart heavy.restart\n")
    L.run_lammps(tmp_path / "in.first", tmp_path)
    (tmp_path / "in.second").write_text(HEAD + "read_restart heavy.restart\nrun 0\n")
    assert "Step" in L.run_lammps(tmp_path / "in.second", tmp_path)
    (tmp_path / "in.checked").write_text(HEAD + f"read_restart heavy.restart\npair_style mlmd {model}\n"
                                         "pair_coeff * * H O\nrun 0\n")
    with pytest.raises(L.LammpsError, match=r"atom type 1 has mass 2.014 but pair_coeff gives it element H"):
        L.run_lammps(tmp_path / "in.checked", tmp_path)


# ------------------------------------------------------------------------------------------------------ OpenMM


def _openmm_simulation(model: Path, integrator: str):
    """A System rebuilt from the model file (a TorchForce cannot be deserialised with openmmtorch 1.5)."""
    import openmm
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms

    top, positions = topology_from_atoms(water_box(2, seed=4, spacing=3.6))  # 7.2 Å box, 2 x 3.5 Å cutoff
    system = MLMDPotential(model).createSystem(top)
    if integrator == "langevin":
        integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
        integ.setRandomNumberSeed(7)
    else:
        integ = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    return sim, positions


def _openmm_state(sim) -> tuple[np.ndarray, np.ndarray, float]:
    from openmm import unit

    st = sim.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    return (st.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
            st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
            st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


@pytest.mark.openmm
@pytest.mark.parametrize("how", ["checkpoint", "state"])
def test_openmm_checkpoint_and_state_continue_the_trajectory(model_files, tmp_path, how):
    """40 steps straight == 20 steps, save, a new Simulation from the model file, load, 20 steps.

    A checkpoint keeps the integrator's random-number state, so Langevin dynamics continues exactly; a State
    (XML) keeps positions, velocities and the step count only, so it is checked with Verlet dynamics."""
    from openmm import unit

    model = model_files["float64"]
    integrator = "langevin" if how == "checkpoint" else "verlet"
    sim, positions = _openmm_simulation(model, integrator)
    sim.context.setPositions(positions)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 3)
    sim.step(20)
    saved = tmp_path / ("half.chk" if how == "checkpoint" else "half.xml")
    (sim.saveCheckpoint if how == "checkpoint" else sim.saveState)(str(saved))
    sim.step(20)
    pos_a, vel_a, e_a = _openmm_state(sim)

    again, _ = _openmm_simulation(model, integrator)
    (again.loadCheckpoint if how == "checkpoint" else again.loadState)(str(saved))
    assert again.context.getStepCount() == 20
    again.step(20)
    pos_b, vel_b, e_b = _openmm_state(again)
    assert again.context.getStepCount() == 40
    np.testing.assert_allclose(pos_b, pos_a, rtol=0, atol=1e-12)  # nm
    np.testing.assert_allclose(vel_b, vel_a, rtol=0, atol=1e-10)  # nm/ps
    assert abs(e_b - e_a) <= 1e-12 * abs(e_a)
    pos_0 = np.asarray(positions.value_in_unit(unit.nanometer))
    assert np.abs(pos_a - pos_0).max() > 1e-4  # it moved


# ---------------------------------------------------------------------------------------------------- training


def _train_config(tmp_path: Path, data: Path, out: str, epochs: int) -> Path:
    cfg = {
        "data": {"path": str(data), "val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"r_cut": 4.0, "channels": 8, "vector_channels": 4, "l_max": 1, "n_layers": 1, "n_basis": 6,
                  "radial_hidden": 16, "dtype": "float64"},
        "train": {"epochs": epochs, "batch_size": 2, "lr": 0.01, "forces_weight": 10.0, "seed": 1, "threads": 1},
        "output_dir": str(tmp_path / out),
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["train_state"]


# `mlmd train CONFIG` whose loss pauses at its N-th batch (saying so), so that the test kills it mid-epoch
PAUSE_MID_EPOCH = """
import sys, time
import mlmd.train.trainer as T
from mlmd.cli import main
calls = [0]
loss = T.weighted_loss
def pausing_loss(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        print("PAUSED at batch", calls[0], flush=True)
        time.sleep(600)
    return loss(*args, **kwargs)
T.weighted_loss = pausing_loss
sys.exit(main(["train", sys.argv[1], "--no-progress"]))
"""


def test_training_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, emt_data, monkeypatch):
    """`mlmd train` SIGKILLed during epoch 2 of 2 resumes (`--resume`) from its epoch-1 checkpoint and ends with
    the weights of an uninterrupted run; a save interrupted half-way leaves the previous checkpoint intact.
    (Resuming at an epoch boundary is the same path: the checkpoint is the last completed epoch's.)"""
    from mlmd.cli import main
    from mlmd.config import load_config
    from mlmd.model.checkpoint import CHECKPOINT_LAST
    from mlmd.train import run_files
    from mlmd.train.trainer import Trainer

    straight = Trainer(load_config(_train_config(tmp_path, emt_data, "straight", 2)), progress=False)
    straight.train()

    cfg = _train_config(tmp_path, emt_data, "killed", 2)
    run = tmp_path / "killed"
    n_batches = -(-len(straight.train_data) // straight.cfg.train.batch_size)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_MID_EPOCH, str(cfg), str(n_batches + 3)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("PAUSED"):  # three optimizer steps into epoch 2
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and lines[-1].startswith("PAUSED"), "".join(lines)
    assert torch.load(run / CHECKPOINT_LAST, weights_only=True)["epoch"] == 1

    # resume, and die while writing the epoch-2 checkpoint: the epoch-1 one must survive untouched
    before = (run / CHECKPOINT_LAST).read_bytes()

    real_fsync = os.fsync

    def dies_while_writing_a_checkpoint(fd: int) -> None:
        if "checkpoint_" in os.readlink(f"/proc/self/fd/{fd}"):  # the bytes are in the temporary file by now
            raise KeyboardInterrupt("killed while writing a checkpoint")
        real_fsync(fd)

    monkeypatch.setattr(run_files.os, "fsync", dies_while_writing_a_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(cfg), "--resume", "--no-progress"])
    monkeypatch.undo()
    assert (run / CHECKPOINT_LAST).read_bytes() == before
    assert not list(run.glob("*.tmp"))

    assert main(["train", str(cfg), "--resume", "--no-progress"]) == 0
    resumed = torch.load(run / CHECKPOINT_LAST, weights_only=True)
    assert resumed["epoch"] == 2
    for k, v in _checkpoint_weights(tmp_path / "straight" / CHECKPOINT_LAST).items():
        torch.testing.assert_close(resumed["train_state"][k], v, rtol=1e-10, atol=1e-12, msg=k)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # nothing lost, nothing counted twice
    epoch1 = torch.load(io.BytesIO(before), weights_only=True)["train_state"]
    assert max(float((resumed["train_state"][k] - v).abs().max()) for k, v in epoch1.items()
               if v.is_floating_point() and v.numel()) > 1e-4  # the resumed epoch did train
