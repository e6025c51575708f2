"""What the out-of-domain check costs per MD step in ASE, OpenMM and LAMMPS, with the bundled water model.

    OMP_NUM_THREADS=1 python benchmarks/domain_cost.py --replicate 2 2 2 --steps 10 --repeats 2

The bundled model's card gets the training domain of its own training data (inputs/water/train.yaml: path and
extra_train_path) in a temporary copy (same weights, same checksum); the runs stay inside it, so the check runs
on every step. Two measures, both in CPU time (a shared machine's load moves them less than wall time):
- the check alone against a step: ASE and OpenMM time the check (OpenMM: the positions fetched from the Context
  plus the DomainReporter's report) repeated on the 192-water box replicated (--replicate 2 2 2: 1,536 atoms),
  against a whole MD step with the check off; LAMMPS (the bundled 3,000-atom box, one rank, NVE) reports the
  CPU time of its check itself (`compute pair mlmd` [9]) against the model's (`[7]`; a step costs more);
- whole steps with the check off and on, interleaved (ASE VelocityVerlet and OpenMM Verlet on the CPU platform
  with 1 thread, in this process): the difference is within the noise of a loaded machine unless it is large.
The load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "inputs" / "water" / "water_model.pt"


def model_with_domain(out: Path) -> Path:
    """The bundled model with the training domain of its training data on its card."""
    import json

    import torch
    import yaml

    from mlmd import keys as K
    from mlmd.data.structures import read_structures
    from mlmd.deploy.domain import training_domain
    from mlmd.deploy.load import read_card

    cfg = yaml.safe_load((REPO / "inputs" / "water" / "train.yaml").read_text())["data"]
    card = read_card(MODEL)
    structures = []
    for key in ("path", "extra_train_path"):
        if cfg.get(key):
            structures += read_structures(REPO / "inputs" / "water" / cfg[key])
    dom = training_domain(((s.numbers, s.positions, s.cell, s.pbc, s.forces) for s in structures), card.elements,
                          card.r_cut)
    extra = {K.META_FILE: ""}
    module = torch.jit.load(str(MODEL), _extra_files=extra)
    meta = json.loads(extra[K.META_FILE])
    meta[K.CARD_TRAINING_DOMAIN] = dom.to_json()
    torch.jit.save(module, str(out), _extra_files={K.META_FILE: json.dumps(meta)})
    print(f"training domain of {len(structures)} structures: {json.dumps(dom.to_json())}")
    return out


def water(replicate):
    import ase.io

    return ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat(tuple(replicate))


def ase_cpu_per_step(model: Path, mode: str, replicate, steps: int) -> float:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from mlmd.engines.ase import MLMDCalculator

    atoms = water(replicate)
    atoms.calc = MLMDCalculator(model, domain=mode)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.run(2)  # warm-up (TorchScript's first calls)
    t0 = time.process_time()
    dyn.run(steps)
    cpu = (time.process_time() - t0) / steps
    assert atoms.calc.domain.found is None, atoms.calc.domain.found  # stayed inside: checked every step
    return cpu


def ase_check_alone(model: Path, replicate, repeats: int = 20) -> float:
    from mlmd.deploy.load import read_card
    from mlmd.engines.domain import DomainMonitor

    atoms = water(replicate)
    monitor = DomainMonitor(read_card(model), "warn")
    monitor.problem(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    t0 = time.process_time()
    for _ in range(repeats):
        assert monitor.problem(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc) is None
    return (time.process_time() - t0) / repeats


def openmm_cpu_per_step(model: Path, mode: str, replicate, steps: int) -> float:
    import openmm
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.engines.openmm.reporters import DomainReporter

    atoms = water(replicate)
    top, positions = topology_from_atoms(atoms)
    system = MLMDPotential(model).createSystem(top)
    sim = app.Simulation(top, system, openmm.VerletIntegrator(0.5 * unit.femtosecond),
                         openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(positions)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    reporter = None
    if mode != "off":
        reporter = DomainReporter(model, 1, top, mode=mode)
        sim.reporters.append(reporter)
    sim.step(2)
    t0 = time.process_time()
    sim.step(steps)
    cpu = (time.process_time() - t0) / steps
    assert reporter is None or reporter.monitor.found is None, reporter.monitor.found
    return cpu


def openmm_check_alone(model: Path, replicate, repeats: int = 20) -> float:
    """CPU s of what the DomainReporter adds to a step: the positions from the Context and its report."""
    import openmm
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.engines.openmm.reporters import DomainReporter

    atoms = water(replicate)
    top, positions = topology_from_atoms(atoms)
    sim = app.Simulation(top, MLMDPotential(model).createSystem(top), openmm.VerletIntegrator(0.5 * unit.femtosecond),
                         openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(positions)
    reporter = DomainReporter(model, 1, top)
    t0 = time.process_time()
    for _ in range(repeats):
        reporter.report(sim, sim.context.getState(getPositions=True))
    assert reporter.monitor.found is None
    return (time.process_time() - t0) / repeats


def lammps_check_share(model: Path, steps: int, workdir: Path) -> tuple[float, float]:
    """CPU s per step of pair_style mlmd's domain check and of the model, on the bundled 3,000-atom box."""
    from mlmd.engines.lammps import run_lammps

    lines = ["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p", "newton on",
             f"read_data {REPO / 'inputs' / 'lammps' / 'water_3000.data'}", f"pair_style mlmd {model} domain warn",
             "pair_coeff * * H O", "neighbor 1.0 bin", "timestep 0.0005", "velocity all create 300 1 dist gaussian",
             "fix nve all nve", "compute t all pair mlmd", "thermo_style custom step pe c_t[7] c_t[9]", "thermo 1",
             "run 2", f"run {steps}"]
    (workdir / "in.domain_cost").write_text("\n".join(lines) + "\n")
    log = run_lammps(workdir / "in.domain_cost", workdir, in_process=False)
    assert "left the model's training domain" not in log
    rows = [r.split() for r in log.splitlines() if len(r.split()) == 4 and r.split()[0].isdigit()]
    first, last = rows[-steps - 1], rows[-1]  # the second run: steps 2 .. 2 + steps
    model_cpu = (float(last[2]) - float(first[2])) / steps
    check_cpu = (float(last[3]) - float(first[3])) / steps
    return check_cpu, model_cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicate", type=int, nargs=3, default=[2, 2, 2], help="of the 192-atom box (ASE, OpenMM)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engines", nargs="+", default=["ase", "openmm", "lammps"])
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"{platform.node()}: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}")
    warnings.simplefilter("error")  # a DomainWarning would mean the run left the domain and stopped checking
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_with_domain(Path(tmp) / "water_domain.pt")
        n = len(water(args.replicate))
        for engine in args.engines:
            if engine == "lammps":
                shares = [lammps_check_share(model, args.steps, Path(tmp)) for _ in range(args.repeats)]
                check, model_cpu = min(shares, key=lambda x: x[0] / x[1])
                print(f"lammps  3000 atoms: the check alone {check * 1000:.3f} ms CPU per step = "
                      f"{100 * check / model_cpu:.2f}% of the model's CPU per step ({model_cpu:.3f} s; a step costs "
                      f"more) (all {shares})", flush=True)
                continue
            times: dict[str, list[float]] = {"off": [], "warn": []}
            for _ in range(args.repeats):
                for mode in ("off", "warn"):  # interleaved
                    run = ase_cpu_per_step if engine == "ase" else openmm_cpu_per_step
                    times[mode].append(run(model, mode, args.replicate, args.steps))
            off, on = min(times["off"]), min(times["warn"])
            alone = (ase_check_alone if engine == "ase" else openmm_check_alone)(model, args.replicate)
            print(f"{engine:7s} {n:5d} atoms: the check alone {alone * 1000:.2f} ms CPU = {100 * alone / off:.2f}% of "
                  f"a step; whole steps: off {off:.4f}, warn {on:.4f} CPU s/step ({100 * (on - off) / off:+.2f}%; "
                  f"all off {times['off']}, warn {times['warn']})", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
