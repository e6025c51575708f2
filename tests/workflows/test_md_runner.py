"""The MD runner layer (mlmd.md): one request type for every engine, one runner signature, the CLI building
the request from its options, and the one progress printer."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

import mlmd.md as md
from conftest import water_box
from mlmd.cli import main
from mlmd.md import MDRequest, runner_of


@pytest.mark.parametrize("engine", md.ENGINES)
def test_every_engine_runner_takes_the_request(engine):
    run = runner_of(engine)
    hints = typing.get_type_hints(run)
    assert list(inspect.signature(run).parameters) == ["r"]
    assert hints["r"] is MDRequest and hints["return"] == dict[str, float]


def test_unknown_engine_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown engine 'gromacs'; known: ase, lammps, openmm"):
        runner_of("gromacs")


def test_cli_builds_the_request_from_its_options(model_files, tmp_path, monkeypatch):
    got = []
    monkeypatch.setattr(md, "run", lambda request: got.append(request) or {})
    water_box(2, 5).write(tmp_path / "w.xyz")
    argv = ["md", str(model_files["float32"]), "--engine", "lammps", "--ensemble", "npt", "--nprocs", "2",
            "--threads", "3", "--structure", str(tmp_path / "w.xyz"), "--output-dir", str(tmp_path / "o"),
            "--steps", "7", "--temperature", "250", "--timestep", "0.25", "--replicate", "1", "2", "3",
            "--log-every", "4", "--trajectory", str(tmp_path / "t.dump")]
    assert main(argv) == 0
    assert got == [MDRequest(
        model=str(model_files["float32"]), engine="lammps", structure=str(tmp_path / "w.xyz"), steps=7,
        temperature=250.0, timestep_fs=0.25, replicate=[1, 2, 3], log_every=4, trajectory=str(tmp_path / "t.dump"),
        ensemble="npt", nprocs=2, threads=3, uncertainty=None, output_dir=str(tmp_path / "o"),
    )]
    got.clear()
    assert main(["md", str(model_files["float32"]), "--uncertainty-threshold", "0.2", "--stop-on-uncertain"]) == 0
    assert got[0].uncertainty == {"threshold": 0.2, "harvest": None, "stop": True, "log": None}


def test_requests_are_checked_before_anything_starts(model_files):
    field_names = {f.name for f in dataclasses.fields(MDRequest)}
    assert {"model", "engine", "structure", "steps", "uncertainty", "output_dir"} <= field_names
    with pytest.raises(ValueError, match="--steps 0 is invalid"):
        md.run(MDRequest(model=model_files["float64"], steps=0))
    with pytest.raises(ValueError, match="uncertainty gating .* ase and openmm"):
        md.run(MDRequest(model=model_files["float64"], engine="lammps", uncertainty={"threshold": 0.1}))
    with pytest.raises(ValueError, match="unknown engine 'x'"):
        md.run(MDRequest(model=model_files["float64"], engine="x"))


def test_one_progress_printer_and_echo(model_files, tmp_path, capsys):
    water_box(2, 6).write(tmp_path / "w.xyz")
    out = md.run_md(model_files["float64"], structure=tmp_path / "w.xyz", steps=2, log_every=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ASE Langevin NVT: 24 atoms, 2 steps")
    assert lines[1].split() == ["step", "time/ps", "Epot/eV", "Ekin/eV", "T/K", "ms/step"]
    # ASE's observers also run before the first step: rows at steps 0, 1, 2
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"] and lines[5].startswith("done: 2 steps")
    assert out["ms_per_step"] > 0
    quiet = md.run_md(model_files["float64"], structure=tmp_path / "w.xyz", steps=2, log_every=1, echo=False)
    assert capsys.readouterr().out == "" and quiet["ms_per_step"] > 0
