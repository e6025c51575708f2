"""One MLIP (mlmd, MACE or NequIP) measured inside its own environment; prints one JSON line per measurement.

Run by benchmarks/peers.py in a fresh subprocess per measurement, with PYTHONPATH pointing at the peer's own
folder (benchmarks/.peers/NAME) or at the repository for mlmd, so each code sees its own e3nn and the process's
resident-memory high-water mark belongs to that one measurement:

    python benchmarks/peer_worker.py evaluate --peer mace --model M.model --data runs/peers/data/test.xyz
    python benchmarks/peer_worker.py ase --peer nequip --model M.nequip.pth --structure box.xyz --steps 5
    python benchmarks/peer_worker.py lammps --model mlmd.pt --structure box.xyz --ranks 2 --steps 5   # mlmd only
    python benchmarks/peer_worker.py openmm --model mlmd.pt --structure box.xyz --steps 5             # mlmd only

evaluate: energy-per-atom, force-component and stress-component MAE / RMSE on labelled frames (REF_* keys written
by benchmarks/peer_split.py) through each code's ASE calculator, so the three are scored by the same lines.
ase / openmm: time per MD step (velocity Verlet or Langevin, 0.5 fs) and the bare model's forward + backward on a
neighbour graph built once (what a step costs without the engine: no neighbour list, no conversions).
lammps: LAMMPS with pair_style mlmd on 1 or more MPI ranks; the plugin times the model and its bridge itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def set_allocator(how: str | None) -> None:
    """The same malloc setting in every process, whatever code it runs. keep: mlmd's keep-memory mallopt
    (mlmd/engines/allocator.py, loaded by path: a peer's process does not see the mlmd package), applied here
    and by the mlmd engines and the LAMMPS plugin through MLMD_KEEP_MEMORY=mallopt (the published runs; the
    engines' default is now a caching allocator for torch, benchmarks/alloc_memory.py); glibc: malloc left
    alone, MLMD_KEEP_MEMORY=0 for mlmd's engines and plugin too. None: each code as it ships."""
    if how is None:
        return
    os.environ["MLMD_KEEP_MEMORY"] = "mallopt" if how == "keep" else "0"  # before any engine or lmp starts
    if how == "keep":
        import importlib.util

        spec = importlib.util.spec_from_file_location("_allocator", REPO / "mlmd" / "engines" / "allocator.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if not mod.keep_freed_memory():
            raise SystemExit("keep-memory malloc setting requested but not applied (not glibc?)")


# MACE's CPU routes: its eager model (what MACECalculator loads), the TorchScript copy run_train writes beside it
# (NAME_compiled.model, e3nn's jit.compile of the model) in MACE's own calculator, or
# torch.compile through MACECalculator's compile_mode (it pads atoms and edges itself so that MD does not recompile)
MACE_ROUTES = ("eager", "torchscript", "compile")


def calculator(peer: str, model: str, mace_route: str = "eager"):
    if peer == "mlmd":
        from mlmd.engines.ase import MLMDCalculator

        return MLMDCalculator(model)
    if peer == "mace":
        from mace.calculators import MACECalculator

        if mace_route == "torchscript":
            import torch

            return MACECalculator(models=torch.jit.load(model, map_location="cpu"), device="cpu",
                                  default_dtype="float32")
        if mace_route == "compile":
            return MACECalculator(model_paths=model, device="cpu", default_dtype="float32", compile_mode="default")
        return MACECalculator(model_paths=model, device="cpu", default_dtype="float32")
    if peer == "nequip":
        from nequip.integrations.ase import NequIPCalculator

        if model.endswith(".nequip.pth") or model.endswith(".nequip.pt2"):  # nequip-compile output
            return NequIPCalculator.from_compiled_model(model, device="cpu")
        return NequIPCalculator._from_saved_model(model, device="cpu")
    raise SystemExit(f"unknown peer {peer!r} (mlmd, mace, nequip)")


def bare_model(peer: str, calc, atoms) -> Callable[[], None]:
    """forward + backward (forces) of the network alone, on a graph built once outside the timing."""
    import torch

    if peer == "mlmd":  # the packaged model's own graph (pairs, then their reverses: what the engines pass)
        module, dtype = calc.module, calc.dtype
        pos = torch.tensor(atoms.positions, dtype=dtype)
        edges, shifts, cell = module._graph(pos, torch.tensor(atoms.cell.array, dtype=dtype),
                                            torch.tensor(atoms.pbc))
        vec0 = (pos[edges[1]] - pos[edges[0]] + shifts @ cell).detach()
        species = module.species_of(torch.tensor(atoms.numbers, dtype=torch.long))
        n, n_mirrored = len(atoms), int(edges.shape[1]) // 2

        def run() -> None:  # under the plain executor, as the engines run the model
            vec = vec0.clone().requires_grad_(True)
            with torch.jit.optimized_execution(False):
                torch.autograd.grad(module.local_energies(species, edges, vec, n, n_mirrored).sum(), vec)

        return run
    if peer == "mace":
        batch = calc._atoms_to_batch(atoms)
        model = calc.models[0]

        def run() -> None:
            model(calc._clone_batch(batch).to_dict(), compute_stress=False, training=False)

        return run
    if peer == "nequip":
        data = calc.atoms_to_data(atoms)

        def run() -> None:
            calc.call_model(dict(data))

        return run
    raise SystemExit(f"unknown peer {peer!r}")


def timed(fn: Callable[[], Any], repeats: int, warmup: int, max_s: float | None = None
          ) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (this process, all threads) of each call after the warm-up. With one thread the CPU
    time is what the call costs a core, whatever else runs on the machine; the wall time grows with the load.
    max_s: stop after the call that brings the timed calls' wall time past it (at least 3 calls)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for k in range(repeats):
        if max_s is not None and k >= 3 and sum(wall) >= max_s:
            break
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return wall, cpu


def load_structure(path: str):
    import ase.io

    return ase.io.read(path)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import ase.io

    calc = calculator(args.peer, args.model)
    frames = ase.io.read(args.data, index=":")
    err: dict[str, list[np.ndarray]] = {"energy_per_atom": [], "forces": [], "stress": []}
    t0 = time.perf_counter()
    for a in frames:
        ref_e, ref_f = float(a.info["REF_energy"]), np.asarray(a.arrays["REF_forces"])
        ref_s = np.asarray(a.info["REF_stress"]).reshape(3, 3) if "REF_stress" in a.info else None
        b = a.copy()
        b.calc = calc
        err["energy_per_atom"].append(np.atleast_1d((b.get_potential_energy() - ref_e) / len(b) * 1e3))
        err["forces"].append((b.get_forces() - ref_f).reshape(-1) * 1e3)
        if ref_s is not None and b.pbc.all():
            from ase.stress import voigt_6_to_full_3x3_stress

            err["stress"].append((voigt_6_to_full_3x3_stress(b.get_stress()) - ref_s).reshape(-1) * 1e3)
    out: dict[str, Any] = {"frames": len(frames), "seconds": time.perf_counter() - t0}
    for key, parts in err.items():
        if parts:
            d = np.concatenate(parts)
            out[f"{key}_mae"] = float(np.abs(d).mean())
            out[f"{key}_rmse"] = float(np.sqrt((d**2).mean()))
    return out


def cmd_ase(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    torch.set_num_threads(args.threads)
    base = peak_rss_mb()
    atoms = load_structure(args.structure)
    calc = calculator(args.peer, args.model, args.mace_route)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    steps, cpu = timed(lambda: dyn.run(1), args.steps, args.warmup, args.max_s)
    out = {"atoms": len(atoms), "step_s": statistics.median(steps), "step_cpu_s": statistics.median(cpu),
           "steps": len(steps), "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base}
    if args.peer == "mlmd":  # whether the calculator runs the AOTInductor copy or fell back to TorchScript
        out["compiled"] = calc.compiled is not None
    if args.bare:
        fn = bare_model(args.peer, calc, atoms)
        bare, bare_cpu = timed(fn, args.steps, args.warmup)  # a method TorchScript has not run yet profiles first
        out.update(bare_s=statistics.median(bare), bare_cpu_s=statistics.median(bare_cpu))
    return out


def cmd_openmm(args: argparse.Namespace) -> dict[str, Any]:
    import openmm
    import torch
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms

    torch.set_num_threads(args.threads)
    base = peak_rss_mb()
    atoms = load_structure(args.structure)
    top, positions = topology_from_atoms(atoms)
    system = MLMDPotential(args.model).createSystem(top)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": str(args.threads)})
    sim.context.setPositions(positions)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

    def step() -> None:  # as mlmd.engines.openmm.checked_step runs it: TorchScript's plain executor
        with torch.jit.optimized_execution(False):
            sim.step(1)

    steps, cpu = timed(step, args.steps, args.warmup)
    out = {"atoms": len(atoms), "step_s": statistics.median(steps), "step_cpu_s": statistics.median(cpu),
           "steps": args.steps, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base}
    if args.bare:  # the same packaged model in this process, on a graph built once (as for ASE)
        from mlmd.engines.ase import MLMDCalculator

        fn = bare_model("mlmd", MLMDCalculator(args.model, threads=args.threads), atoms)
        bare, bare_cpu = timed(fn, args.steps, args.warmup)
        out.update(bare_s=statistics.median(bare), bare_cpu_s=statistics.median(bare_cpu))
    return out


def thermo_rows(log: str) -> tuple[list[str], list[list[float]]]:
    """The header and rows of the last thermo table of a LAMMPS log."""
    lines = log.splitlines()
    start = max(k for k, line in enumerate(lines) if line.split()[:1] == ["Step"])
    head, rows = lines[start].split(), []
    for line in lines[start + 1 :]:
        try:
            row = [float(v) for v in line.split()]
        except ValueError:
            break
        if len(row) == len(head):
            rows.append(row)
    return head, rows


def cmd_lammps(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from mlmd.md import run_md

    os.environ["MLMD_COMPILED"] = args.compiled  # read when pair_style mlmd loads the model
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="peer-lammps-") as tmp:
        s = run_md(args.model, engine="lammps", structure=args.structure, steps=total, log_every=1,
                   nprocs=args.ranks, threads=args.threads, output_dir=tmp, echo=False)
        log = (Path(tmp) / "log.lammps").read_text()
        head, rows = thermo_rows(log)
    # the steps after the warm-up, from the thermo columns: cpu = seconds since the run started (wall),
    # model_s / bridge_s = seconds in the model / in the plugin's own work, summed over ranks
    first = next(r for r in rows if r[head.index("Step")] >= args.warmup)
    last = rows[-1]
    n = last[head.index("Step")] - first[head.index("Step")]
    wall = (last[head.index("CPU")] - first[head.index("CPU")]) / n
    model = (last[head.index("model_s")] - first[head.index("model_s")]) / n / args.ranks
    bridge = (last[head.index("bridge_s")] - first[head.index("bridge_s")]) / n / args.ranks
    # LAMMPS's own share of the loop's wall time its ranks got a CPU for ("xx% CPU use"): CPU time per step.
    # LAMMPS counts user time only; the system time (page faults of the allocator) is added in the proportion
    # the whole lmp process had it, so that the figure compares with process_time in the Python engines
    use = re.search(r"([0-9.]+)% CPU use with", log)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys_share = ru.ru_stime / (ru.ru_utime + ru.ru_stime) if ru.ru_utime + ru.ru_stime > 0 else 0.0
    share = float(use.group(1)) / 100 / (1.0 - sys_share) if use else float("nan")
    # the largest single rank (ru_maxrss of children is the largest one process reached, not a sum)
    return {"atoms": int(s["atoms"]), "ranks": args.ranks, "step_s": wall, "step_cpu_s": wall * share,
            "cpu_use": share, "sys_share": sys_share, "steps": int(n),
            "peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
            "bare_s": model, "bridge_s": bridge, "outside_model_share": 1.0 - model / wall,
            "bridge_share": bridge / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evaluate")
    e.add_argument("--data", required=True)
    for name in ("ase", "openmm", "lammps"):
        p = sub.add_parser(name)
        p.add_argument("--structure", required=True)
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--threads", type=int, default=1)
        if name in ("ase", "openmm"):
            p.add_argument("--bare", action="store_true", help="also time the bare model on the same structure")
        if name == "lammps":
            p.add_argument("--ranks", type=int, default=1)
            p.add_argument("--compiled", default="1", choices=["0", "1"],
                           help="0: the TorchScript model even where a compiled copy (MODEL.aoti.pt2) loads")
        if name == "ase":
            p.add_argument("--mace-route", default="eager", choices=MACE_ROUTES)
            p.add_argument("--max-s", type=float, default=None,
                           help="stop the timed steps once they have taken this many wall seconds (at least 3)")
    for p in sub.choices.values():
        p.add_argument("--peer", default="mlmd", choices=["mlmd", "mace", "nequip"])
        p.add_argument("--model", required=True)
        p.add_argument("--allocator", choices=["keep", "glibc"], help="default: each code as it ships")
    args = ap.parse_args()
    set_allocator(args.allocator)
    if args.cmd in ("openmm", "lammps") and args.peer != "mlmd":
        raise SystemExit(f"{args.cmd}: only mlmd runs here (see benchmarks/RESULTS.md for why)")
    out = {"cmd": args.cmd, "peer": args.peer, "model": args.model, **globals()[f"cmd_{args.cmd}"](args)}
    out["load_avg"] = os.getloadavg()[0]
    out["allocator"] = args.allocator or "as shipped"
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
