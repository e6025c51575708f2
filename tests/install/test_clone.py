"""Each clone runs its own code: `import mlmd` refuses a checkout other than the clone a process was started
from (its .venv link, or its working folder), unless PYTHONPATH names that checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# imports this repository's mlmd whatever the working folder (sys.path[0] would otherwise be the cwd)
IMPORT = f"import sys; sys.path.insert(0, {str(REPO)!r}); import mlmd; print(mlmd.__file__)"


@pytest.fixture
def other_clone(tmp_path) -> Path:
    """A second clone's shape (mlmd/, plugins/lammps/build.sh) with a .venv linking this environment."""
    clone = tmp_path / "other"
    (clone / "mlmd").mkdir(parents=True)
    (clone / "mlmd" / "__init__.py").write_text("")
    (clone / "plugins" / "lammps").mkdir(parents=True)
    (clone / "plugins" / "lammps" / "build.sh").write_text("")
    (clone / ".venv").symlink_to(Path(sys.prefix).resolve(), target_is_directory=True)
    return clone


def _run(python: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLMD_ALLOW_OTHER_CLONE")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([python, "-c", IMPORT], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_refused_from_another_clones_venv(other_clone, tmp_path):
    out = _run(str(other_clone / ".venv" / "bin" / "python"), tmp_path)
    assert out.returncode != 0
    assert "OtherCloneError" in out.stderr and f"started from the clone {other_clone.resolve()}" in out.stderr
    assert f"run `make env` in {other_clone.resolve()}" in out.stderr  # the fix


def test_refused_inside_another_clone(other_clone):
    # the environment's own python (not a clone's .venv path): the working folder names the clone
    out = _run(str(Path(sys.prefix).resolve() / "bin" / "python"), other_clone)
    assert out.returncode != 0 and "its working folder is in that clone" in out.stderr


def test_own_clone_and_explicit_pythonpath_run(other_clone, tmp_path):
    mine = _run(str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable, REPO)
    assert mine.returncode == 0, mine.stderr
    assert Path(mine.stdout.strip()) == REPO / "mlmd" / "__init__.py"
    chosen = _run(str(other_clone / ".venv" / "bin" / "python"), other_clone, pythonpath=str(REPO))
    assert chosen.returncode == 0, chosen.stderr
    outside = _run(str(Path(sys.prefix).resolve() / "bin" / "python"), tmp_path)  # no clone in sight: no check
    assert outside.returncode == 0, outside.stderr
