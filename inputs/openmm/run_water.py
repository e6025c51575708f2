"""Liquid water with the bundled mlmd model in OpenMM: NVT (Langevin) then NVE (velocity Verlet).

An ordinary OpenMM script: the model enters as one TorchForce (openmm-torch) that OpenMM evaluates in C++.

    python inputs/openmm/run_water.py                          # 3,456 atoms, 10 ps NVT + 5 ps NVE
    python inputs/openmm/run_water.py --nvt-steps 40 --nve-steps 40 --report-every 10   # a quick look

Writes to --out (default runs/openmm_water): log.csv (StateDataReporter), trajectory.dcd with start.pdb
(its topology), energy_temperature.png, and prints progress with the speed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WATER = HERE.parent / "water"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(WATER / "water_model.pt"), help="packaged mlmd model (.pt)")
    p.add_argument("--structure", default=str(WATER / "water_box_192.xyz"), help="periodic water box (extxyz)")
    p.add_argument("--replicate", type=int, nargs=3, default=[3, 3, 2], help="copies along a, b, c (192 -> 3,456)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    p.add_argument("--nvt-steps", type=int, default=20000)
    p.add_argument("--nve-steps", type=int, default=10000)
    p.add_argument("--report-every", type=int, default=100, help="steps between log lines and DCD frames")
    p.add_argument("--minimize", type=int, default=0,
                   help="energy-minimisation iterations first (default none: the bundled box is equilibrated)")
    p.add_argument("--precision", choices=["single", "double"], default=None,
                   help="run the model in this precision (default: the model's own, float32 for the bundled one; "
                        "double makes the NVE total energy readable to <1 kJ/mol, at about twice the cost)")
    p.add_argument("--platform", default=None, help="OpenMM platform (default: CUDA with a GPU, else CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch and OpenMM CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="runs/openmm_water")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before torch is imported
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads starve on shared machines
    # torch keeps large blocks in transparent huge pages instead of giving them back to the kernel after every
    # evaluation: 20-25% faster steps at 3,456 atoms here (page faults), the memory stays with the process
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

    import ase.io
    import openmm
    import torch  # before openmmtorch: torch loads the libraries the openmmtorch wheel links
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms

    torch.set_num_threads(threads)
    for path in (args.model, args.structure):
        if not Path(path).is_file():
            sys.exit(f"run_water.py: {path} not found (train and package the model first: see inputs/water/)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    atoms = ase.io.read(args.structure).repeat(tuple(args.replicate))
    topology, positions = topology_from_atoms(atoms)
    system = MLMDPotential(args.model, precision=args.precision).createSystem(topology)  # TorchForce + CMMotionRemover

    # one Context, two integrators: Langevin for NVT, then velocity Verlet for NVE
    dt = args.timestep * unit.femtosecond
    langevin = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond, dt)
    langevin.setRandomNumberSeed(args.seed)
    integrator = openmm.CompoundIntegrator()
    integrator.addIntegrator(langevin)
    integrator.addIntegrator(openmm.VerletIntegrator(dt))

    if args.platform:
        platform = openmm.Platform.getPlatformByName(args.platform)
    else:  # OpenMM lists CUDA whenever its plugin loads, GPU or not: ask torch whether there is a device
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        gpu = "CUDA" in names and torch.cuda.is_available()
        platform = openmm.Platform.getPlatformByName("CUDA" if gpu else "CPU")
    properties = {"Threads": str(threads)} if platform.getName() == "CPU" else {}
    simulation = app.Simulation(topology, system, integrator, platform, properties)
    simulation.context.setPositions(positions)
    print(f"{len(atoms)} atoms, box {atoms.cell.lengths().round(3).tolist()} Å, model {args.model}, "
          f"platform {platform.getName()}, {threads} thread(s)", flush=True)

    if args.minimize > 0:
        simulation.minimizeEnergy(maxIterations=args.minimize)
    with open(out / "start.pdb", "w") as f:
        app.PDBFile.writeFile(topology, simulation.context.getState(getPositions=True).getPositions(), f)
    simulation.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)

    total = args.nvt_steps + args.nve_steps
    columns = dict(step=True, time=True, potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                   temperature=True, speed=True)
    simulation.reporters.append(app.StateDataReporter(str(out / "log.csv"), args.report_every, **columns))
    simulation.reporters.append(app.StateDataReporter(
        sys.stdout, args.report_every, progress=True, remainingTime=True, totalSteps=total, separator="\t",
        **columns))
    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), args.report_every))

    import torch

    # TorchScript's plain executor: ~15% less CPU per step here (see mlmd.engines.openmm.checked_step)
    with torch.jit.optimized_execution(False):
        print(f"NVT: {args.nvt_steps} steps of {args.timestep} fs at {args.temperature} K", flush=True)
        integrator.setCurrentIntegrator(0)
        simulation.step(args.nvt_steps)
        print(f"NVE: {args.nve_steps} steps", flush=True)
        integrator.setCurrentIntegrator(1)
        simulation.step(args.nve_steps)

    plot(out / "log.csv", out / "energy_temperature.png", args.nvt_steps * args.timestep / 1000.0)
    print(f"wrote {out / 'log.csv'}, {out / 'trajectory.dcd'} (topology: {out / 'start.pdb'}), "
          f"{out / 'energy_temperature.png'}")
    return 0


def plot(log: Path, png: Path, nve_start_ps: float) -> None:
    """Energies (relative to their first value: absolute ones are large offsets), NVE drift, temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.atleast_1d(np.genfromtxt(log, delimiter=",", names=True))
    names = data.dtype.names
    col = {key: next(n for n in names if n.lower().startswith(key))
           for key in ("time", "potential", "kinetic", "total", "temperature")}
    t = data[col["time"]]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(7, 8))
    for key, color in (("potential", "C0"), ("kinetic", "C2"), ("total", "C3")):
        ax1.plot(t, data[col[key]] - data[col[key]][0], color=color, label=key)
    ax1.set_ylabel("E − E(0) (kJ/mol)")
    ax1.legend()
    # from the first report after the switch: Langevin-middle and leapfrog Verlet report the kinetic energy of
    # differently timed velocities, so the last NVT line is not an NVE reference
    nve = t > nve_start_ps + 1e-9
    if nve.any():
        total = data[col["total"]][nve]
        ax2.plot(t[nve], total - total[0], color="C3")
    ax2.set_ylabel("NVE: total − its first value\n(kJ/mol)")
    ax3.plot(t, data[col["temperature"]], color="C1")
    ax3.set_ylabel("temperature (K)")
    ax3.set_xlabel("time (ps)")
    for ax in (ax1, ax2, ax3):
        ax.axvline(nve_start_ps, color="grey", ls="--", lw=0.8)
    ax1.set_title("mlmd water in OpenMM: NVT, then NVE (after the dashed line)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
