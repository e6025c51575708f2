"""One configuration through LAMMPS (``compute``): energy, forces, stress, per-atom energies and virials (and
the committee spread) in the ASE frame, read back from the log and the dump.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlmd.engines.lammps.data import write_data
from mlmd.engines.lammps.inputs import charges_of, model_card, model_elements, pair_lines
from mlmd.engines.lammps.plugin import LammpsError
from mlmd.engines.lammps.runner import run_lammps

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

# LAMMPS's own conversion in units metal (bar per eV/Å^3, src/update.cpp), which differs from CODATA's
# (mlmd.units.EV_PER_A3_TO_BAR) by 8e-8: use it to undo LAMMPS's pressure units exactly
LAMMPS_METAL_NKTV2P = 1.6021765e6


@dataclass
class LammpsResult:
    """One configuration through LAMMPS, in the ASE frame and ASE conventions (eV, Å)."""

    energy: float
    forces: np.ndarray  # [N, 3]
    energies: np.ndarray  # [N] per-atom energies (compute pe/atom)
    stress: np.ndarray | None  # Voigt xx yy zz yz xz xy, eV/Å^3, ASE sign (periodic systems)
    virial: np.ndarray  # [3, 3] eV, sum of x (x) f (LAMMPS's virial)
    atom_virials: np.ndarray  # [N, 3, 3] eV, per-atom virials (compute stress/atom), summing to `virial`
    # [N, 3, 3] eV, per-atom centroid virials (compute centroid/stress/atom); None with a kspace style, which
    # LAMMPS does not support in that compute
    centroid_virials: np.ndarray | None
    log: str
    # committee models with uncertainty=True (compute mlmd/uncertainty): energy std (eV), per-atom force std
    # (eV/Å) and its max and mean, per-atom energy std (eV); the quantities of MLMDCalculator's energy_std etc.
    energy_std: float | None = None
    forces_std: np.ndarray | None = None
    forces_std_max: float | None = None
    forces_std_mean: float | None = None
    energies_std: np.ndarray | None = None


SINGLE_POINT = """\
units           metal
atom_style      {atom_style}
atom_modify     map array
boundary        {boundary}
newton          on
{header_lines}
read_data       data.lmp
{pair_lines}
neighbor        1.0 bin
compute         mlmd_pe all pe/atom
compute         mlmd_va all stress/atom NULL virial
{centroid_compute}
{uncertainty_compute}
compute         mlmd_p all pressure NULL virial
variable        vol equal vol
thermo_style    custom step pe
dump            mlmd_d all custom 1 dump.txt id fx fy fz c_mlmd_pe c_mlmd_va[*]{centroid_dump}{uncertainty_dump}
dump_modify     mlmd_d sort id format float %.17g
run             0
print           "MLMD_RESULT $(pe:%.17g) $(c_mlmd_p[1]:%.17g) $(c_mlmd_p[2]:%.17g) $(c_mlmd_p[3]:%.17g) \
$(c_mlmd_p[4]:%.17g) $(c_mlmd_p[5]:%.17g) $(c_mlmd_p[6]:%.17g) $(v_vol:%.17g)"
{uncertainty_print}
"""


UNCERTAINTY_COMPUTE = "compute         mlmd_unc all mlmd/uncertainty"
UNCERTAINTY_PRINT = (
    'print           "MLMD_UNCERTAINTY $(c_mlmd_unc[1]:%.17g) $(c_mlmd_unc[2]:%.17g) $(c_mlmd_unc[3]:%.17g)"'
)


def compute(
    atoms: Atoms,
    model: str | Path,
    nprocs: int = 1,
    threads: int = 1,
    elements: Sequence[str] | None = None,
    pair_lines_override: Sequence[str] | None = None,
    extra_lines: Sequence[str] = (),
    header_lines: Sequence[str] = (),
    in_process: bool | None = None,
    workdir: str | Path | None = None,
    uncertainty: bool = False,
    tune_electrostatics: bool = False,
) -> LammpsResult:
    """Energy, forces, stress, per-atom energies and virials of `atoms` from LAMMPS with pair_style mlmd.

    elements: the atom types' elements (default: the model's order). pair_lines_override replaces the
    pair_style/pair_coeff lines (e.g. hybrid/overlay); extra_lines go right after them; header_lines go
    before the box is read (e.g. `processors 2 1 1`). uncertainty: also the committee spread from
    `compute mlmd/uncertainty` (committee models only; LAMMPS refuses others). tune_electrostatics: Ewald
    parameters chosen for the structure's own charges and cell (pair_lines' structure), as in ASE and OpenMM.
    """
    import numpy as np

    names = list(elements) if elements else model_elements(model)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mlmd-lammps-")
        workdir = tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        periodic = bool(np.all(atoms.pbc))
        charges = charges_of(model_card(model), model)
        m = write_data(atoms, workdir / "data.lmp", names, charges)
        if pair_lines_override:
            lines = list(pair_lines_override)
        else:
            diameter = float(np.linalg.norm(np.ptp(atoms.positions, axis=0))) + 1.0 if len(atoms) else 1.0
            lines = pair_lines(model, names, natoms=len(atoms), periodic=periodic, coulomb_cutoff=diameter,
                               structure=atoms if tune_electrostatics and periodic else None)
        kspace = any(line.split()[:1] == ["kspace_style"] for line in lines + list(extra_lines))
        text = SINGLE_POINT.format(
            atom_style="atomic" if charges is None else "charge",
            centroid_compute="" if kspace else "compute         mlmd_vc all centroid/stress/atom NULL virial",
            centroid_dump="" if kspace else " c_mlmd_vc[*]",
            boundary="p p p" if periodic else "m m m",
            header_lines="\n".join(header_lines),
            pair_lines="\n".join([*lines, *extra_lines]),
            uncertainty_compute=UNCERTAINTY_COMPUTE if uncertainty else "",
            uncertainty_dump=" c_mlmd_unc[1] c_mlmd_unc[2]" if uncertainty else "",
            uncertainty_print=UNCERTAINTY_PRINT if uncertainty else "",
        )
        (workdir / "in.single").write_text(text)
        log = run_lammps(workdir / "in.single", workdir, nprocs=nprocs, threads=threads, in_process=in_process)
        found = re.search(r"^MLMD_RESULT (.*)$", log, re.M)
        if found is None:
            raise LammpsError(f"no result line in the LAMMPS log:\n{log[-2000:]}")
        values = [float(v) for v in found.group(1).split()]
        energy, p, volume = values[0], values[1:7], values[7]
        spread = None
        if uncertainty:
            found = re.search(r"^MLMD_UNCERTAINTY (.*)$", log, re.M)
            if found is None:
                raise LammpsError(f"no uncertainty line in the LAMMPS log:\n{log[-2000:]}")
            spread = [float(v) for v in found.group(1).split()]
        table = _read_dump(workdir / "dump.txt", len(atoms))
    finally:
        if tmp is not None:
            tmp.cleanup()
    forces = table[:, 1:4] @ m.T
    energies = table[:, 4]
    # stress/atom is -(per-atom virial) in bar Å^3: xx yy zz xy xz yz
    va = -table[:, 5:11] / LAMMPS_METAL_NKTV2P
    w = np.empty((len(atoms), 3, 3))
    for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
        w[:, a, b] = va[:, k]
        w[:, b, a] = va[:, k]
    atom_virials = np.einsum("ij,njk,lk->nil", m, w, m)
    # centroid/stress/atom: xx yy zz xy xz yz yx zx zy
    centroid_virials = None
    if not kspace:
        vc = -table[:, 11:20] / LAMMPS_METAL_NKTV2P
        wc = np.empty((len(atoms), 3, 3))
        for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)]):
            wc[:, a, b] = vc[:, k]
        centroid_virials = np.einsum("ij,njk,lk->nil", m, wc, m)
    # pressure compute (virial part only) in bar -> virial in eV
    pv = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]]) * volume / LAMMPS_METAL_NKTV2P
    virial = m @ pv @ m.T
    stress = None
    if periodic:
        s = -virial / abs(float(np.linalg.det(atoms.cell.array)))
        stress = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    result = LammpsResult(energy, forces, energies, stress, virial, atom_virials, centroid_virials, log)
    if spread is not None:  # per-atom columns last in the dump; std values are frame-independent
        result.energy_std, result.forces_std_max, result.forces_std_mean = spread
        result.forces_std, result.energies_std = table[:, -2], table[:, -1]
    return result


def _read_dump(path: Path, n: int) -> np.ndarray:
    import numpy as np

    lines = path.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("ITEM: ATOMS"))) + 1
    table = np.array([[float(v) for v in line.split()] for line in lines[start : start + n]])
    if table.shape[0] != n:
        raise LammpsError(f"dump has {table.shape[0]} atoms, expected {n}")
    return table
