"""pair_style mlmd's memory setting (MLMD_KEEP_MEMORY, plugins/lammps/mlmd_alloc.h): the caching allocator the
plugin installs by default gives bit for bit the trajectory of plain malloc and of the older mallopt setting."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import REPO
from mlmd.engines import lammps as L
from mlmd.engines.lammps.build import plugin_build_dir

pytestmark = pytest.mark.lammps

# 3,072 water atoms: per-edge tensors of tens of MB, so the allocator serves the model's large blocks
SCRIPT = """
units metal
atom_style atomic
boundary p p p
newton on
read_data {data}
pair_style mlmd {model}
pair_coeff * * H O
neighbor 1.0 bin
velocity all create 300 4928459 loop geom
fix 1 all nve
timestep 0.0005
thermo_style custom step pe ke press
thermo_modify format float %.17g
thermo 1
dump d all custom 3 forces.dump id fx fy fz
dump_modify d sort id format float %.17g
run 3
"""


def test_the_allocator_library_is_built_beside_the_plugin():
    assert (plugin_build_dir() / "libmlmd_alloc.so").is_file()


def run(tmp_path, keep: str) -> tuple[str, list[str], str]:
    work = tmp_path / keep
    work.mkdir()
    (work / "in.alloc").write_text(SCRIPT.format(data=REPO / "inputs" / "lammps" / "water_3000.data",
                                                 model=REPO / "inputs" / "water" / "water_model.pt"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLMD_KEEP_MEMORY=keep)
    out = subprocess.run([*L.lmp_command(), "-in", "in.alloc", "-log", "none"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    memory = re.search(r"pair_style mlmd: memory: (.*)", out.stdout)
    thermo = [line for line in out.stdout.splitlines() if re.match(r"\s+[0-3]\s+-?\d", line)]
    assert memory is not None and len(thermo) == 4
    return memory.group(1), thermo, (work / "forces.dump").read_text()


def test_caching_allocator_gives_the_trajectory_of_plain_malloc(tmp_path):
    cached, plain, mallopt = run(tmp_path, "1"), run(tmp_path, "0"), run(tmp_path, "mallopt")
    assert cached[0].startswith("caching allocator") and plain[0].startswith("malloc as is")
    assert mallopt[0].startswith("glibc never trims")
    assert cached[1] == plain[1] == mallopt[1]  # energies and pressures at every step, 17 digits
    assert cached[2] == plain[2] == mallopt[2]  # forces after 3 steps
