"""Share of an MD step spent in the long-range terms (PME electrostatics + D3 dispersion) in ASE, OpenMM and LAMMPS.

    OMP_NUM_THREADS=1 python benchmarks/long_range_share.py [--engines ase openmm lammps] [--replicate 1,1,1 2,2,2]
        [--ranks 1 4] [--steps 4 2] [--rounds 2] [--json out.json]

Water: inputs/lammps/water_3000.data (3,072 atoms), replicated (2,2,2: 24,576 atoms). Two models, run alternately:
(a) the hybrid file (default inputs/water/water_model_hybrid.pt: fixed charges + D3(gfn2), 7/7 Å smooth cutoffs,
its card's electrostatics: PME at accuracy 1e-4, 8 Å real space); (b) the same file's short-range potential
packaged alone (identical weights, long range off; --short takes another short-range file instead). Each
engine runs the long range its own way: ASE inside the packaged model (torch PME + the model's D3); OpenMM
with electrostatics='engine' (NonbondedForce PME on the card's charges, splitting and mesh) and the model's D3
in the TorchForce; LAMMPS with `mlmd lammps-input`'s lines (hybrid/overlay mlmd + coul/long + kspace pppm,
D3 inside pair_style mlmd). The training-domain check is off in both (a) and (b) (it is no long-range term).

Figures are CPU seconds per MD step (every thread; LAMMPS: summed over ranks), so that a loaded machine
changes them less than wall time; share = 1 - (b)/(a). ASE and OpenMM run (a) and (b) in one process, a block
of steps each in turn, --rounds times; LAMMPS runs one process per (model, round), alternating, and times a
second `run` after a warm-up one (LAMMPS's own loop CPU: `timer full`, "% CPU use" x loop time x ranks).
Terms alone, where the engine shows them: ASE the Coulomb and D3 terms of the same module (forces by autograd,
in the same process); OpenMM force groups (group 1 TorchForce = short range + D3, group 2 NonbondedForce PME;
its D3 term also alone, as in ASE); LAMMPS its timing breakdown (Pair = every pair style, Kspace = PPPM;
CPU s) and `compute pair mlmd` ([7] CPU s in the short-range model, [8] in D3). The load average is recorded
with each row: compare rows taken together. MPI ranks may outnumber cores: their CPU time then counts the
work, plus MPICH's busy waiting in communication.
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

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "inputs" / "lammps" / "water_3000.data"
ELEMENTS = ["H", "O"]


def load() -> float:
    return os.getloadavg()[0]


def water(replicate: tuple[int, int, int]):
    import ase.io

    atoms = ase.io.read(DATA, format="lammps-data", atom_style="atomic", Z_of_type={1: 1, 2: 8})
    atoms.pbc = True
    return atoms.repeat(replicate)


def short_range_file(hybrid: Path, out: Path) -> Path:
    """The hybrid's short-range potential packaged alone: the same weights, no long-range terms."""
    import torch

    from mlmd.deploy.export import package
    from mlmd.deploy.load import load_model
    from mlmd.model.potential import potential_from_hparams

    module, card = load_model(hybrid)
    potential = potential_from_hparams(card.hparams).to(getattr(torch, card.dtype))
    prefix = "potential."
    weights = {k[len(prefix):]: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    potential.load_state_dict(weights)
    package(potential.eval(), out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# ASE and OpenMM: (a) and (b) in one process (a worker started per engine and size)


def cpu_of(fn) -> float:
    c = time.process_time()
    fn()
    return time.process_time() - c


def term_call(term, positions, cell, numbers) -> None:
    """What a step asks of one long-range term alone: its energy and, by autograd, its forces."""
    import torch

    pos = torch.tensor(positions, dtype=torch.float32, requires_grad=True)
    with torch.jit.optimized_execution(False):  # as the ASE calculator and the LAMMPS plugin run the model
        e = term(pos, torch.tensor(cell, dtype=torch.float32), torch.tensor(numbers), torch.tensor([True] * 3)).sum()
        torch.autograd.grad(e, pos)


def ase_worker(a: Path, b: Path, replicate, steps: int, rounds: int, warm: int) -> dict:
    import numpy as np
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from mlmd.engines.ase import MLMDCalculator

    atoms = water(replicate)
    kt = units.kB * 300.0  # Maxwell-Boltzmann momenta at 300 K
    atoms.set_momenta(np.random.default_rng(1).normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * kt))
    dyn = {}
    for key, path in (("a", a), ("b", b)):
        at = atoms.copy()
        at.calc = MLMDCalculator(path, domain="off")
        dyn[key] = VelocityVerlet(at, 0.5 * units.fs)
    module = dyn["a"].atoms.calc.module
    terms = {"coulomb": next(module.long_range.children()), "d3": next(module.dispersion.children())}

    for d in dyn.values():  # warm-up: the first calls build and optimise the graphs
        d.run(warm)
    at = dyn["a"].atoms
    for term in terms.values():
        term_call(term, at.positions, at.cell.array, at.numbers)
    rows = []
    for r in range(rounds):
        row = {"round": r, "load": load()}
        for key in ("a", "b"):
            row[key] = cpu_of(lambda d=dyn[key]: d.run(steps)) / steps
        for name, term in terms.items():
            row[name] = cpu_of(lambda t=term: term_call(t, at.positions, at.cell.array, at.numbers))
        rows.append(row)
    return {"atoms": len(atoms), "rounds": rows}


def openmm_worker(a: Path, b: Path, replicate, steps: int, rounds: int, warm: int) -> dict:
    import openmm
    import torch
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.engines.openmm.bridge import ShortRangeBridge

    atoms = water(replicate)
    top, positions = topology_from_atoms(atoms)
    sims, d3, sr_bridge = {}, None, None
    for key, path, elec in (("a", a, "engine"), ("b", b, None)):
        potential = MLMDPotential(path, electrostatics=elec)
        if key == "a":  # the model's D3 term, and the engine-PME bridge without it, timed alone
            loaded = potential.mlpotential._impl.model
            d3 = next(loaded.module.dispersion.children())
            sr_bridge = torch.jit.script(ShortRangeBridge(loaded.module, atoms.numbers.tolist(), None, True,
                                                          loaded.card.r_cut, torch.float32, []).eval())
        system = potential.createSystem(top)
        for force in system.getForces():  # group 1: the TorchForce, group 2: OpenMM's PME
            force.setForceGroup({"mlmd": 1, "mlmd electrostatics": 2}.get(force.getName(), 0))
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
        sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
        sim.context.setPositions(positions)
        sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        sims[key] = sim
    for sim in sims.values():  # warm-up: openmm-torch's TorchScript profiles and optimises its first calls
        sim.step(warm)
    for key, g in (("a", 1), ("a", 2), ("b", 1)):
        sims[key].context.getState(getForces=True, groups={g})

    def group(key: str, g: int) -> float:
        return cpu_of(lambda: sims[key].context.getState(getForces=True, groups={g}))

    def alone() -> tuple[float, float]:
        """CPU s of the D3 term, and of the engine-PME bridge's short-range part (forces, as TorchForce asks)."""
        state = sims["a"].context.getState(getPositions=True)
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)

        def bridge() -> None:
            x = torch.tensor(pos / 10.0, dtype=torch.float64, requires_grad=True)
            torch.autograd.grad(sr_bridge(x, torch.tensor(box / 10.0, dtype=torch.float64)), x)

        return cpu_of(lambda: term_call(d3, pos, box, atoms.numbers)), cpu_of(bridge)

    for _ in range(3):  # TorchScript's profiling executor (TorchForce's too) optimises over the first calls
        alone()

    rows = []
    for r in range(rounds):
        row = {"round": r, "load": load()}
        for key in ("a", "b"):
            row[key] = cpu_of(lambda s=sims[key]: s.step(steps)) / steps
        row["torchforce"], row["pme"], row["torchforce_b"] = group("a", 1), group("a", 2), group("b", 1)
        row["d3"], row["sr_bridge"] = alone()
        rows.append(row)
    return {"atoms": len(atoms), "rounds": rows}


WORKERS = {"ase": ase_worker, "openmm": openmm_worker}


def run_worker(engine: str, a: Path, b: Path, replicate, steps: int, rounds: int, warm: int, tmp: Path) -> dict:
    out = tmp / f"{engine}_{'x'.join(map(str, replicate))}.json"
    cmd = [sys.executable, __file__, "--worker", engine, "--hybrid", str(a), "--short", str(b),
           "--replicate", ",".join(map(str, replicate)), "--steps", str(steps), "--rounds", str(rounds),
           "--warm", str(warm), "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------------------
# LAMMPS: one process per (model, round), alternating

SCRIPT = """\
units           metal
atom_style      {style}
boundary        p p p
newton          on
read_data       {data}
replicate       {replicate}
{pair}
neighbor        1.0 bin
neigh_modify    every 1 delay 0 check yes
velocity        all create 300.0 4928 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
compute         t all pair mlmd
thermo_style    custom step pe c_t[7] c_t[8]
thermo_modify   format float %.10g
timer           full
thermo          {warm}
run             {warm}
thermo          {steps}
run             {steps}
"""


def lammps_files(a: Path, b: Path, natoms: int, tmp: Path) -> dict[str, tuple[str, Path, list[str]]]:
    """{model: (atom_style, data file, pair lines)} with `mlmd lammps-input`'s lines, domain check off."""
    from mlmd.engines.lammps.data import write_data
    from mlmd.engines.lammps.inputs import atom_style, charges_of, model_card, pair_lines

    base = water((1, 1, 1))
    out = {}
    for key, model in (("a", a), ("b", b)):
        style = atom_style(model)
        charges = charges_of(model_card(model), model)
        data = tmp / f"water_{key}.data"
        write_data(base, data, ELEMENTS, charges=charges)
        lines = pair_lines(model, ELEMENTS, natoms=natoms)
        path = str(Path(model).resolve())
        assert path in lines[0] and " " not in path, lines[0]
        lines[0] = lines[0].replace(path, f"{path} domain off", 1)
        out[key] = (style, data, lines)
    return out


def parse_log(log: str, steps: int) -> dict:
    """The last run's loop CPU and wall per step, its sections' CPU s per step (summed over ranks), and compute
    pair mlmd's counters over it (CPU s per step, summed over ranks)."""
    loop = re.findall(r"Loop time of (\S+) on (\d+) procs for (\d+) steps", log)[-1]
    wall, procs = float(loop[0]), int(loop[1])
    tail = log[log.rfind("Loop time of"):]
    cpu_use = float(re.search(r"([\d.]+)% CPU use", tail).group(1)) / 100
    out = {"wall": wall / steps, "cpu": wall * cpu_use * procs / steps, "procs": procs}
    for line in tail.splitlines():  # Section | min | avg | max | %varavg | %CPU | %total (timer full)
        cols = [c.strip() for c in line.split("|")]
        if len(cols) == 7 and cols[0] in ("Pair", "Kspace", "Neigh", "Comm") and cols[2][:1].isdigit():
            out[cols[0].lower()] = float(cols[2]) * float(cols[5]) / 100 * procs / steps
    # the timed run's thermo rows: its first (after the setup's force call) and its last
    block = log[log.rfind("Step"):log.rfind("Loop time of")]
    rows = re.findall(r"^\s*(\d+)\s+\S+\s+(\S+)\s+(\S+)\s*$", block, re.M)
    first, last = rows[0], rows[-1]
    out["model"] = (float(last[1]) - float(first[1])) / steps
    out["d3"] = (float(last[2]) - float(first[2])) / steps
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
    out["grid"] = "x".join(grid.groups()) if grid else "?"
    return out


def lammps_rows(files, replicate, ranks: int, warm: int, steps: int, rounds: int, tmp: Path) -> list[dict]:
    from mlmd.engines.lammps import run_lammps

    rows = []
    for r in range(rounds):
        row: dict = {"round": r, "load": load()}
        for key in ("a", "b"):
            style, data, lines = files[key]
            work = tmp / f"lmp_{key}_{ranks}_{r}"
            work.mkdir(exist_ok=True)
            script = work / "in.share"
            script.write_text(SCRIPT.format(style=style, data=data, replicate=" ".join(map(str, replicate)),
                                            pair="\n".join(lines), warm=warm, steps=steps))
            row[key] = parse_log(run_lammps(script, work, nprocs=ranks, in_process=False), steps)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# report


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def summary(engine: str, ranks: int, atoms: int, rounds: list[dict]) -> dict:
    """Medians over rounds: (a), (b), the share (median of the per-round shares) and the terms' CPU s."""
    def get(row, key, sub=None):
        v = row[key]
        return v[sub] if isinstance(v, dict) else v

    cpu = "cpu" if engine == "lammps" else None
    a = median([get(r, "a", cpu) for r in rounds])
    b = median([get(r, "b", cpu) for r in rounds])
    share = median([1 - get(r, "b", cpu) / get(r, "a", cpu) for r in rounds])
    if engine == "ase":
        m = {k: median([r[k] for r in rounds]) for k in ("coulomb", "d3")}
        terms = f"Coulomb (torch PME) {m['coulomb']:.3g}, D3 {m['d3']:.3g} (alone)"
    elif engine == "openmm":
        m = {k: median([r[k] for r in rounds]) for k in ("pme", "d3", "torchforce", "torchforce_b", "sr_bridge")}
        terms = (f"PME (NonbondedForce) {m['pme']:.3g}, D3 alone {m['d3']:.3g}; TorchForce {m['torchforce']:.3g} "
                 f"(b: {m['torchforce_b']:.3g}), of which short range by the engine-PME bridge {m['sr_bridge']:.3g}")
    else:
        m = {k: median([r["a"][k] for r in rounds]) for k in ("pair", "kspace", "model", "d3")}
        terms = (f"Kspace {m['kspace']:.3g}, D3 [8] {m['d3']:.3g}, Pair (mlmd + coul/long) {m['pair']:.3g} "
                 f"(b: {median([r['b']['pair'] for r in rounds]):.3g}); grid {rounds[0]['a']['grid']}")
    loads = ", ".join(f"{r['load']:.1f}" for r in rounds)
    return {"engine": engine, "ranks": ranks, "atoms": atoms, "a": a, "b": b, "share": share, "terms": terms,
            "shares": [1 - get(r, "b", cpu) / get(r, "a", cpu) for r in rounds], "loads": loads}


def print_table(rows: list[dict]) -> None:
    print("| engine | ranks | atoms | (a) hybrid, CPU s/step | (b) short range | long-range share (per round) | "
          "terms, CPU s/step | load |")
    print("|---|---|---|---|---|---|---|---|")
    for s in rows:
        per = ", ".join(f"{100 * x:.0f}" for x in s["shares"])
        print(f"| {s['engine']} | {s['ranks']} | {s['atoms']:,} | {s['a']:.3g} | {s['b']:.3g} | "
              f"**{100 * s['share']:.0f}%** ({per}) | {s['terms']} | {s['loads']} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engines", nargs="+", default=["ase", "openmm", "lammps"], choices=["ase", "openmm", "lammps"])
    p.add_argument("--replicate", nargs="+", default=["1,1,1", "2,2,2"], help="copies of water_3000.data")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 4], help="LAMMPS MPI ranks")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 2],
                   help="timed MD steps per block, one per --replicate (the last one for the rest)")
    p.add_argument("--warm", type=int, default=3, help="warm-up steps before the timed ones")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--hybrid", default=str(REPO / "inputs" / "water" / "water_model_hybrid.pt"))
    p.add_argument("--short", default=None, help="(b): a short-range file (default: the hybrid's own, packaged alone)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    reps = [tuple(int(x) for x in r.split(",")) for r in args.replicate]
    if args.worker:  # one engine and size, (a) and (b) in this process
        import torch

        torch.set_num_threads(1)
        res = WORKERS[args.worker](Path(args.hybrid), Path(args.short), reps[0], args.steps[0], args.rounds,
                                  args.warm)
        Path(args.json).write_text(json.dumps(res))
        return

    print(f"# {platform.node()}, {os.cpu_count()} cores, load {load():.2f}, OMP_NUM_THREADS=1, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {' '.join(sys.argv)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="mlmd-lrshare-") as tmp_name:
        tmp = Path(tmp_name)
        hybrid = Path(args.hybrid).resolve()
        short = Path(args.short).resolve() if args.short else short_range_file(hybrid, tmp / "short_range.pt")
        print(f"# (a) {hybrid}\n# (b) {short if args.short else 'its short-range potential packaged alone'}")
        for k, rep in enumerate(reps):
            steps = args.steps[min(k, len(args.steps) - 1)]
            natoms = len(water(rep))
            for engine in args.engines:
                if engine == "lammps":
                    files = lammps_files(hybrid, short, natoms, tmp)
                    for ranks in args.ranks:
                        rounds = lammps_rows(files, rep, ranks, args.warm, steps, args.rounds, tmp)
                        results.append(summary(engine, ranks, natoms, rounds) | {"rounds": rounds, "steps": steps})
                        print_table(results[-1:])
                else:
                    try:
                        res = run_worker(engine, hybrid, short, rep, steps, args.rounds, args.warm, tmp)
                    except subprocess.CalledProcessError as err:  # e.g. killed for memory: the other rows go on
                        print(f"| {engine} | 1 | {natoms:,} | failed: {err} |", flush=True)
                        continue
                    results.append(summary(engine, 1, natoms, res["rounds"]) | {"rounds": res["rounds"],
                                                                                "steps": steps})
                    print_table(results[-1:])
    print("\nall rows:")
    print_table(results)
    print(f"# load at the end {load():.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
