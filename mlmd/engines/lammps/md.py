"""`mlmd md --engine lammps`: the bundled NVT/NPT input scripts with a model, and the summary of their log.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mlmd.engines.lammps.data import write_data
from mlmd.engines.lammps.inputs import long_range_terms, model_card, model_elements, n_members, pair_lines
from mlmd.engines.lammps.plugin import INPUTS, LammpsError
from mlmd.engines.lammps.runner import run_lammps

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
    domain: str = "warn",
) -> dict[str, float]:
    """Run inputs/lammps/in.water_{nvt,npt} with `model` on `nprocs` MPI ranks (log in workdir/log.lammps).

    structure: any file ASE reads (default: the bundled 3,000-atom water box, inputs/lammps/water_3000.data).
    Returns steps per second, ms per step, the final temperature and the share of the pair time spent outside
    the model's forward and backward (the bridge). A committee model also prints its uncertainty in the thermo
    output (compute mlmd/uncertainty: e_std, f_std_max), and the summary gets its largest values. domain:
    pair_style mlmd's domain keyword (warn, stop or off: a configuration outside the card's training domain).
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
            "domain": domain,
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
