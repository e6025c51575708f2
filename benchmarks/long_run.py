"""Long MD runs of a packaged model in LAMMPS and OpenMM: energy drift and resident memory along the run.

    python benchmarks/long_run.py --engines lammps openmm --ensembles nvt nve --steps 100000
    python benchmarks/long_run.py --engines lammps --ensembles nve --steps 2000 --out /tmp/nve_sanity

Each run is a process of its own (the wheel's `lmp` with pair_style mlmd; a Python child running OpenMM with
the TorchForce), started from the same structure with velocities drawn at the temperature, 0.5 fs steps, one
thread. Default structure: 36 water molecules (108 atoms) at 1 g/cm^3, a 10.25 Å box (OpenMM needs at least twice
the bundled model's 5 Å cutoff), equilibrated for 2.5 ps with flexible TIP3P-FB (mlmd.data.generate, seeded):
small enough for 100,000 steps in well under an hour on one core (the bundled 192-atom box took ~50 ms of CPU
per step here). This process reads the engine's energies as it goes and samples the resident memory of the
engine's process tree (VmRSS in /proc/PID/status: `lmp` is a wrapper that starts the LAMMPS binary) at every
report. Printed along the run and written to OUT.json / OUT.png:
- energy drift per atom per ps: slope of a linear fit of the total energy / atom against time, after a warm-up
  of 10% of the run (the start relaxes to the model's own equilibrium, releasing heat). NVE: the
  integration error of a conservative force field (it should be ~0 and shrink as dt^2). NVT (Langevin, friction
  1/ps by default, in both engines): the total energy exchanges heat with the bath; its slope says whether the run is
  stationary, and in LAMMPS (fix langevin ... tally yes) the conserved quantity `econserve` (total energy minus
  the heat the thermostat added) gives the integration drift as in NVE; OpenMM's LangevinMiddleIntegrator
  keeps no such tally;
- resident memory: first sample after the warm-up (10% of the run), last and largest sample, and the growth as
  the slope of a linear fit over the samples after the warm-up (MB per 100,000 steps).
The machine is shared: the time per step is for information only. `--from-json OUT.json` recomputes the figures
and the plot from a previous run's series.

The bundled water model's results: benchmarks/long_run_lammps.json and long_run_openmm.json (+ .png), 100,000
steps of NVE and of NVT (Langevin 1/ps) in each engine. Its first version (before the NVE refinement of
inputs/water/refine/) collapsed within ~0.2 ps of NVE and needed a friction of 50/ps to stay liquid
(benchmarks/long_run_first_model_nve.json and _nvt.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "inputs" / "water" / "water_model.pt"
DEFAULT_MOLECULES = 36
DEFAULT_FRICTION_PER_PS = 1.0
COLUMNS = ("step", "time_ps", "temp", "pe", "ke", "etotal", "econserve")  # energies in eV

LAMMPS_INPUT = """\
units           metal
atom_style      atomic
atom_modify     map array
boundary        p p p
newton          on
read_data       {data}
pair_style      mlmd {model}
pair_coeff      * * {elements}
neighbor        1.0 bin
neigh_modify    every 1 delay 0 check yes
timestep        {dt_ps}
velocity        all create {temperature} {seed} mom yes rot no dist gaussian
fix             integrate all nve
{thermostat}
{extra}
thermo_style    custom step time temp pe ke etotal econserve
thermo_modify   flush yes format float %.12g
thermo          {every}
run             {steps}
"""

OPENMM_CHILD = """
import os, sys, json
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
torch.set_num_threads(1)
import ase.io, openmm
from openmm import app, unit
from mlmd.engines.openmm import MLMDPotential, checked_state, checked_step, topology_from_atoms
from mlmd.units import EV_TO_KJ_PER_MOL
a = json.loads(sys.argv[1])
atoms = ase.io.read(a["structure"])
top, positions = topology_from_atoms(atoms)
potential = MLMDPotential(a["model"])
system = potential.createSystem(top, removeCMMotion=a["ensemble"] != "nve")
dt = a["dt_fs"] * unit.femtosecond
if a["ensemble"] == "nve":
    integrator = openmm.VerletIntegrator(dt)
else:
    integrator = openmm.LangevinMiddleIntegrator(a["temperature"] * unit.kelvin, a["friction"] / unit.picosecond, dt)
    integrator.setRandomNumberSeed(a["seed"])
sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
sim.context.setPositions(positions)
sim.context.setVelocitiesToTemperature(a["temperature"] * unit.kelvin, a["seed"])
n_dof = 3 * system.getNumParticles() - (3 if a["ensemble"] != "nve" else 0)
kb = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
done = 0
while True:
    st = checked_state(sim, potential.card.r_cut, getEnergy=True)
    pe = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    print("THERMO", done, done * a["dt_fs"] / 1000, 2 * ke / (n_dof * kb), pe / EV_TO_KJ_PER_MOL,
          ke / EV_TO_KJ_PER_MOL, (pe + ke) / EV_TO_KJ_PER_MOL, "nan", flush=True)
    if done >= a["steps"]:
        break
    n = min(a["every"], a["steps"] - done)
    checked_step(sim, n, potential.card.r_cut)
    done += n
"""


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (VmRSS summed), MB; nan once it is gone."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    total = 0.0
    for p in tree:
        try:
            found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(found.group(1)) / 1024 if found else 0.0
    return total if total > 0 else float("nan")


def water_box(n_molecules: int, seed: int, path: Path) -> Path:
    """n water molecules at 1 g/cm^3 after 2.5 ps of flexible TIP3P-FB at 300 K (written as extxyz)."""
    import ase.io

    from mlmd.data.generate import Condition, sample_water_md

    frame = sample_water_md(Condition(n_molecules, 1.0, 300.0, 1), np.random.default_rng(seed))[0]
    frame.info.clear()
    ase.io.write(path, frame)
    return path


def _lammps_command(args: argparse.Namespace, ensemble: str, workdir: Path) -> list[str]:
    import ase.io

    from mlmd.engines import lammps as L

    atoms = ase.io.read(str(args.structure))
    names = [e for e in L.model_elements(args.model) if e in set(atoms.get_chemical_symbols())]
    L.write_data(atoms, workdir / "data.lmp", names)
    thermostat = ""
    if ensemble == "nvt":
        thermostat = (f"fix             bath all langevin {args.temperature} {args.temperature} "
                      f"{1.0 / args.friction} {args.seed + 1} zero yes tally yes")
    (workdir / "in.long").write_text(LAMMPS_INPUT.format(
        data=workdir / "data.lmp", model=Path(args.model).resolve(), elements=" ".join(names),
        dt_ps=args.timestep / 1000, temperature=args.temperature, seed=args.seed + 1, thermostat=thermostat,
        extra="\n".join(args.lammps_extra),
        every=args.report_every, steps=args.steps))
    return [*L.lmp_command(), "-nocite", "-in", str(workdir / "in.long"), "-log", str(workdir / "log.lammps")]


def _openmm_command(args: argparse.Namespace, ensemble: str) -> list[str]:
    spec = {"structure": str(args.structure), "model": str(Path(args.model).resolve()), "ensemble": ensemble,
            "temperature": args.temperature, "friction": args.friction, "dt_fs": args.timestep,
            "seed": args.seed + 1, "steps": args.steps, "every": args.report_every}
    return [sys.executable, "-c", OPENMM_CHILD, json.dumps(spec)]


def run_one(args: argparse.Namespace, engine: str, ensemble: str) -> dict:
    """Run one engine/ensemble pair, streaming its reports; returns the series and the summary figures."""
    with tempfile.TemporaryDirectory(prefix=f"mlmd-long-{engine}-") as tmp:
        cmd = _lammps_command(args, ensemble, Path(tmp)) if engine == "lammps" else _openmm_command(args, ensemble)
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rows, rss, wall, tail = [], [], [], []
        next_print = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            parts = line.split()
            if engine == "openmm":
                if parts[:1] != ["THERMO"]:
                    continue
                parts = parts[1:]
            if len(parts) != len(COLUMNS):
                continue
            try:
                values = [float(v) for v in parts]
            except ValueError:
                continue
            rows.append(values)
            rss.append(rss_mb(proc.pid))
            wall.append(time.perf_counter() - t0)
            step = int(values[0])
            if step >= next_print or step >= args.steps:
                next_print = step + max(args.steps // 20, 1)
                natoms = _natoms(args)
                rate = (wall[-1] - wall[0]) / max(step - rows[0][0], 1) * 1000
                print(f"  {engine:6} {ensemble}: step {step:>7} / {args.steps}  T {values[2]:7.1f} K  "
                      f"E/atom {values[5] / natoms:+.5f} eV  RSS {rss[-1]:7.1f} MB  {rate:6.1f} ms/step", flush=True)
        code = proc.wait()
    if code != 0 or not rows:
        return {"engine": engine, "ensemble": ensemble, "failed": True, "exit_status": code,
                "output_tail": "".join(tail)[-3000:], **(summarise(args, engine, ensemble, rows, rss, wall)
                                                         if len(rows) > 2 else {})}
    return summarise(args, engine, ensemble, rows, rss, wall)


def _natoms(args: argparse.Namespace) -> int:
    if not hasattr(args, "_natoms"):
        import ase.io

        args._natoms = len(ase.io.read(str(args.structure)))
    return args._natoms


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def summarise(args: argparse.Namespace, engine: str, ensemble: str, rows: list, rss: list, wall: list) -> dict:
    data = np.array(rows, dtype=float)
    n = _natoms(args)
    series = {"step": data[:, 0].tolist(), "time_ps": data[:, 1].tolist(), "temp": data[:, 2].tolist(),
              "etotal_per_atom": (data[:, 5] / n).tolist(), "econserve_per_atom": (data[:, 6] / n).tolist(),
              "rss_MB": list(rss), "wall_s": list(wall)}
    return {"engine": engine, "ensemble": ensemble, "atoms": n, "timestep_fs": args.timestep,
            **figures(series, engine, ensemble), "series": series}


def figures(series: dict, engine: str, ensemble: str) -> dict:
    """The summary figures of one run from its series. Fits and averages skip the first 10% of the run (warm-up:
    the start relaxes to the model's own equilibrium)."""
    steps, t, temp = (np.asarray(series[k], dtype=float) for k in ("step", "time_ps", "temp"))
    etot, econ = np.asarray(series["etotal_per_atom"]), np.asarray(series["econserve_per_atom"], dtype=float)
    rss = np.asarray(series["rss_MB"], dtype=float)
    warm = steps >= 0.1 * steps[-1]
    out = {
        "steps": int(steps[-1]), "simulated_ps": float(t[-1] - t[0]),
        "temperature_mean_K": float(np.mean(temp[warm])), "temperature_std_K": float(np.std(temp[warm])),
        "temperature_first_last_K": [float(temp[0]), float(temp[-1])],
        "etotal_drift_eV_per_atom_per_ps": _slope(t[warm], etot[warm]),  # linear fit after the warm-up
        "etotal_range_eV_per_atom": float(etot[warm].max() - etot[warm].min()),
        "rss_after_warmup_MB": float(rss[warm][0]), "rss_last_MB": float(rss[-1]),
        "rss_max_MB": float(np.nanmax(rss)),
        "rss_growth_MB_per_100k_steps": _slope(steps[warm], rss[warm]) * 1e5,
    }
    if engine == "lammps" and ensemble == "nvt":
        out["econserve_drift_eV_per_atom_per_ps"] = _slope(t[warm], econ[warm])
    if series.get("wall_s"):  # (not in files written before it was recorded)
        wall = np.asarray(series["wall_s"], dtype=float)
        out["wall_s"] = float(wall[-1] - wall[0])
        out["ms_per_step"] = float((wall[-1] - wall[0]) / max(steps[-1] - steps[0], 1) * 1000)
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k, r in enumerate(results):
        if "series" not in r:
            continue
        s = r["series"]
        label = f"{r['engine']} {r['ensemble'].upper()}"
        color = f"C{k}"
        e = np.array(s["etotal_per_atom"])
        axes[0].plot(s["time_ps"], e - e[0], color=color, label=label)
        if r["engine"] == "lammps" and r["ensemble"] == "nvt":
            c = np.array(s["econserve_per_atom"], dtype=float)
            axes[0].plot(s["time_ps"], c - c[0], "--", color=color, label=label + " conserved quantity")
        axes[1].plot(s["time_ps"], s["temp"], color=color, label=label)
        axes[2].plot(np.array(s["step"]) / 1000, s["rss_MB"], color=color, label=label)
    axes[0].set(xlabel="time (ps)", ylabel="E - E(0) (eV/atom)", title="total energy")
    axes[1].set(xlabel="time (ps)", ylabel="T (K)", title="temperature")
    axes[2].set(xlabel="step (thousands)", ylabel="RSS (MB)", title="engine resident memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(r: dict) -> str:
    line = (f"  {r['engine']} {r['ensemble']}: {r['steps']} steps ({r['simulated_ps']:.1f} ps), {r['ms_per_step']:.1f} "
            f"ms/step; T {r['temperature_mean_K']:.1f} ± {r['temperature_std_K']:.1f} K; total-energy "
            f"drift {r['etotal_drift_eV_per_atom_per_ps']:+.3e} eV/atom/ps")
    if "econserve_drift_eV_per_atom_per_ps" in r:
        line += f" (conserved quantity {r['econserve_drift_eV_per_atom_per_ps']:+.3e})"
    return line + (f"; RSS {r['rss_after_warmup_MB']:.1f} -> {r['rss_last_MB']:.1f} MB (max {r['rss_max_MB']:.1f}), "
                   f"growth {r['rss_growth_MB_per_100k_steps']:+.2f} MB per 100k steps")


def reanalyse(path: Path) -> int:
    doc = json.loads(path.read_text())
    for r in doc["runs"]:
        if "series" in r:
            r.update(figures(r["series"], r["engine"], r["ensemble"]))
            print(report(r))
    path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc["runs"], path.with_suffix(".png"))
    print(f"rewrote {path} and {path.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--structure", type=Path, default=None,
                   help=f"starting structure (default: {DEFAULT_MOLECULES} TIP3P-FB waters, see above)")
    p.add_argument("--engines", nargs="+", choices=["lammps", "openmm"], default=["lammps", "openmm"])
    p.add_argument("--ensembles", nargs="+", choices=["nvt", "nve"], default=["nvt", "nve"])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--report-every", type=int, default=None, help="steps between reports (default: steps / 500)")
    p.add_argument("--friction", type=float, default=DEFAULT_FRICTION_PER_PS, help="Langevin friction, 1/ps (NVT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lammps-extra", action="append", default=[], metavar="LINE",
                   help="extra LAMMPS input line after the integrator, e.g. 'fix tether all spring/self 2.0' and "
                   "'fix_modify tether energy yes' to hold a model that is not stable on its own")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "long_run")
    p.add_argument("--from-json", type=Path, default=None,
                   help="no runs: recompute the figures and the plot of a previous OUT.json from its series")
    args = p.parse_args(argv)
    if args.from_json is not None:
        return reanalyse(args.from_json)
    if args.report_every is None:
        args.report_every = max(args.steps // 500, 1)
    args.out = args.out.resolve()  # the engines run in temporary folders
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.structure is not None:
        args.structure = args.structure.resolve()
    if args.structure is None:
        args.structure = water_box(DEFAULT_MOLECULES, args.seed, args.out.with_suffix(".start.xyz"))
    load = os.getloadavg()[0]
    print(f"long runs: {args.model.name} on {args.structure.name} ({_natoms(args)} atoms), {args.steps} steps of "
          f"{args.timestep} fs at {args.temperature} K, 1 thread; {platform.processor() or platform.machine()}, "
          f"load average {load:.1f}", flush=True)
    results = []
    for engine in args.engines:
        for ensemble in args.ensembles:
            r = run_one(args, engine, ensemble)
            results.append(r)
            if r.get("failed"):
                print(f"  {engine} {ensemble}: FAILED (exit status {r['exit_status']}):\n{r['output_tail'][-1500:]}")
                if "series" not in r:
                    continue
            print(report(r), flush=True)
    meta = {"model": str(args.model), "structure": str(args.structure), "atoms": _natoms(args), "steps": args.steps,
            "timestep_fs": args.timestep, "temperature_K": args.temperature, "friction_per_ps": args.friction,
            "load_average_at_start": load, "machine": platform.platform()}
    args.out.with_suffix(".json").write_text(json.dumps({"settings": meta, "runs": results}, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
