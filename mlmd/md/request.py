"""The request of one MD run (every option of `mlmd md`), its checks, and the starting structure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmd.resources import inputs_dir

BUNDLED = inputs_dir()  # the repository's inputs/, or the copy that an installed mlmd carries
DEFAULT_MODEL = BUNDLED / "water" / "water_model.pt"
DEFAULT_BOX = BUNDLED / "water" / "water_box_192.xyz"
ENGINES = ("ase", "lammps", "openmm")


@dataclass(frozen=True)
class MDRequest:
    """One MD run, the same fields for every engine (mlmd.md.run dispatches it).

    model: a packaged model file; engine: ase, lammps or openmm; structure: any file ASE reads (None: the bundled
    water box, for H/O models only; LAMMPS takes its 3,000-atom one); ensemble: nvt (Langevin), npt (LAMMPS,
    OpenMM: at pressure_bar); replicate: copies of the cell along a, b, c; log_every: steps between progress rows
    (and trajectory frames, uncertainty checks); nprocs: MPI ranks (LAMMPS); threads: torch threads (per rank);
    uncertainty (committee models, ASE and OpenMM): keyword arguments of mlmd.uncertainty.UncertaintyGate
    (threshold, harvest, stop, log); output_dir: where the LAMMPS log goes (default: beside the trajectory, else
    the current folder); platform: the OpenMM platform; echo: print the progress (False: only return the summary);
    domain: "warn" (once, naming the step and the atoms), "stop" or "off": what a configuration outside the
    training domain on the model card does (mlmd.engines.domain; LAMMPS: pair_style mlmd ... domain).
    """

    model: str | Path = DEFAULT_MODEL
    engine: str = "ase"
    structure: str | Path | None = None
    steps: int = 200
    temperature: float = 300.0
    timestep_fs: float = 0.5
    replicate: tuple[int, int, int] | list[int] = (1, 1, 1)
    log_every: int = 20
    trajectory: str | Path | None = None
    seed: int = 0
    ensemble: str = "nvt"
    pressure_bar: float = 1.0
    nprocs: int = 1
    threads: int = 1
    uncertainty: dict[str, Any] | None = None
    output_dir: str | Path | None = None
    platform: str = "CPU"
    echo: bool = True
    domain: str = "warn"

    def check(self) -> None:
        """ValueError naming what is wrong (an option, the structure, an engine that cannot do it), before
        anything starts."""
        from mlmd.engines.domain import check_domain_mode

        check_domain_mode(self.domain)
        check_md_options(self.steps, self.temperature, self.timestep_fs, self.nprocs, self.threads, self.log_every,
                         self.replicate)
        if self.structure is None:
            default_structure_allowed(self.model)
        else:
            read_structure(self.structure)  # a clear error now rather than inside an engine
        if self.uncertainty is not None and self.engine == "lammps":
            raise ValueError(
                "uncertainty gating from `mlmd md` runs in the ase and openmm engines; in LAMMPS use "
                "`compute mlmd/uncertainty` with fix halt (see README)"
            )
        if self.engine not in ENGINES:
            raise unknown_engine(self.engine)

    @property
    def workdir(self) -> Path:
        """The folder of the run's log (LAMMPS): output_dir, else the trajectory's folder, else the current one."""
        return md_output_dir(self.output_dir, self.trajectory)


def unknown_engine(engine: str) -> ValueError:
    return ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def md_output_dir(output_dir: str | Path | None, trajectory: str | Path | None) -> Path:
    """The folder of an MD run's log: the one given, else the trajectory's folder, else the current one."""
    if output_dir is not None:
        return Path(output_dir)
    if trajectory:
        return Path(trajectory).resolve().parent
    return Path(".")


STRUCTURE_FORMATS = (
    "extxyz/xyz, cif, pdb, vasp (POSCAR/CONTCAR), lammps-data, traj, and the other formats ase.io.read knows"
)


def check_md_options(
    steps: int, temperature: float, timestep_fs: float, nprocs: int = 1, threads: int = 1, log_every: int = 1,
    replicate: tuple[int, int, int] | list[int] = (1, 1, 1),
) -> None:
    """ValueError naming the option, its value and what it must be, before anything starts."""
    checks = [
        ("--steps", steps, steps >= 1, "an integer >= 1"),
        ("--temperature", temperature, math.isfinite(temperature) and temperature > 0, "> 0 (kelvin)"),
        ("--timestep", timestep_fs, math.isfinite(timestep_fs) and timestep_fs > 0, "> 0 (fs)"),
        ("--nprocs", nprocs, nprocs >= 1, "an integer >= 1"),
        ("--threads", threads, threads >= 1, "an integer >= 1"),
        ("--log-every", log_every, log_every >= 1, "an integer >= 1"),
        ("--replicate", list(replicate), len(replicate) == 3 and all(int(n) >= 1 for n in replicate),
         "three integers >= 1"),
    ]
    for name, value, ok, rule in checks:
        if not ok:
            raise ValueError(f"{name} {value} is invalid: it must be {rule}")


def read_structure(path: str | Path) -> Any:
    """The first frame of a structure file as ASE Atoms; a missing file, a file type ASE does not know or an
    unreadable file raise ValueError naming the file (and the formats)."""
    import ase.io
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"structure file not found: {path}")
    unknown = ValueError(
        f"{path}: unknown structure file type; use one of the formats ASE reads, named by its extension: "
        f"{STRUCTURE_FORMATS}"
    )
    try:
        fmt = filetype(str(path))
    except UnknownFileTypeError:
        raise unknown from None
    if fmt not in ioformats:
        raise unknown
    try:
        atoms = ase.io.read(str(path))
    except UnknownFileTypeError:
        raise unknown from None
    except Exception as err:  # ASE raises many types for malformed input
        raise ValueError(f"cannot read structure file {path}: {type(err).__name__}: {err}") from None
    if len(atoms) == 0:
        raise ValueError(f"structure file {path} holds no atoms")
    return atoms


def default_structure_allowed(model: str | Path) -> None:
    """The bundled water box is the default structure only for a model of H and O: any other needs --structure."""
    from mlmd.deploy.load import read_card

    elements = list(read_card(model).elements)
    if not set(elements) <= {"H", "O"} or not elements:
        raise ValueError(
            f"model {model} is for {' '.join(elements) or 'unknown elements'}: the default structure is the bundled "
            "water box (H, O), so give the starting structure with --structure FILE"
        )
