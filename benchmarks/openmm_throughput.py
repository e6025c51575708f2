"""OpenMM throughput of an mlmd model through openmm-torch: ns/day on the CPU platform and the bridge overhead.

    python benchmarks/openmm_throughput.py [MODEL.pt] --replicate 3 3 2 --threads 1 2 --steps 10

Water: inputs/water/water_box_192.xyz replicated (3 3 2: 3,456 atoms). For each thread count it times
- a step: LangevinMiddleIntegrator, 0.5 fs, CPU platform (TorchForce evaluated in OpenMM's C++ loop);
- the bare model: the packaged TorchScript forward + backward on the same positions, called from Python;
- the bridge: the scripted OpenMMBridge (nm -> Å, atomic numbers, box check, kJ/mol) forward + backward;
and prints steps/s, ns/day and the share of a step spent outside the model itself (1 - bare/step): OpenMM's
integration and force bookkeeping + the bridge + openmm-torch's tensor copies. As that difference drowns in
the noise of a shared machine, the two parts are also timed alone: a step of the same System without the
TorchForce, and the bridge's own work (index, unit conversion, box check, casts, their backward) around a
model that costs nothing. Without MODEL the bundled
inputs/water/water_model.pt is used, or, if it is missing, a random-weight model of the same architecture
(inputs/water/train.yaml), which costs the same to evaluate. The load average is printed: on a shared machine
the absolute figures move with it (the ratios much less).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve when shared

REPO = Path(__file__).resolve().parent.parent


def random_water_model(path: Path) -> Path:
    import torch

    from mlmd.config import load_config
    from mlmd.deploy.export import package
    from mlmd.model.potential import build_potential

    cfg = load_config(REPO / "inputs" / "water" / "train.yaml")
    torch.manual_seed(0)
    package(build_potential([1, 8], cfg.model, 40.0).eval(), path)
    return path


def timed_interleaved(fns: list, repeats: int) -> list[dict[str, list[float]]]:
    """Wall, user-CPU and system-CPU seconds (all threads) of each fn() per round, the fns called in turn each
    round so that a change in the machine's load hits all of them alike (after two warm-up rounds: TorchScript
    profiles and optimises its first runs). User CPU is the computation, whatever else runs on the machine;
    system CPU is mostly page faults from the allocator giving memory back and taking it again."""
    for _ in range(2):
        for fn in fns:
            fn()
    out: list[dict[str, list[float]]] = [{"wall": [], "user": [], "sys": []} for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), os.times()
            fn()
            c1 = os.times()
            out[k]["wall"].append(time.perf_counter() - t0)
            out[k]["user"].append(c1.user - c0.user)
            out[k]["sys"].append(c1.system - c0.system)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--replicate", type=int, nargs=3, default=[3, 3, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=10, help="timed steps (and model calls) per thread count")
    args = p.parse_args()

    import ase.io
    import openmm
    import torch
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, build_bridge, topology_from_atoms

    tmp = tempfile.TemporaryDirectory(prefix="mlmd-bench-")
    model = Path(args.model) if args.model else REPO / "inputs" / "water" / "water_model.pt"
    what = str(model)
    if not model.is_file():
        model = random_water_model(Path(tmp.name) / "water_arch_random.pt")
        what = "random weights, inputs/water/train.yaml architecture (the bundled model is not there yet)"
    atoms = ase.io.read(REPO / "inputs" / "water" / "water_box_192.xyz").repeat(tuple(args.replicate))
    top, positions = topology_from_atoms(atoms)
    potential = MLMDPotential(model)
    card = potential.card
    print(f"model: {what} ({card.dtype}, r_cut {card.r_cut} Å)")
    print(f"system: {len(atoms)} atoms of water, box {atoms.cell.lengths().round(2).tolist()} Å, 0.5 fs steps")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; torch {torch.__version__}, OpenMM {openmm.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    system = potential.createSystem(top)

    module = potential.mlpotential._impl.model.module
    dtype = getattr(torch, card.dtype)
    pos_a = torch.tensor(atoms.positions, dtype=dtype)
    cell = torch.tensor(atoms.cell.array, dtype=dtype)
    numbers = torch.tensor(atoms.numbers)
    pbc = torch.tensor([True, True, True])
    bridge = build_bridge(potential.mlpotential._impl.model, atoms.numbers.tolist(), None, True)
    pos_nm = torch.tensor(atoms.positions * 0.1, dtype=torch.float64)
    box_nm = torch.tensor(atoms.cell.array * 0.1, dtype=torch.float64)

    # forces only: autograd.grad on the positions, no gradients of the weights
    def bare() -> None:
        x = pos_a.clone().requires_grad_(True)
        torch.autograd.grad(module(x, cell, numbers, pbc), x)

    def bridged() -> None:
        x = pos_nm.clone().requires_grad_(True)
        torch.autograd.grad(bridge(x, box_nm), x)

    print("per call, ms: fastest wall (median wall) / median user CPU / median system CPU; steps/s and ns/day from")
    print("the fastest step; outside model = 1 - bare model / step, from the median user CPU (all threads)")
    print(f"{'threads':>7}{'steps/s':>9}{'ns/day':>9}{'step':>27}{'bare model (forces)':>27}{'bridge (forces)':>27}"
          f"{'outside model':>15}")
    steps_by_threads = {}
    for n in args.threads:
        torch.set_num_threads(n)
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
        sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": str(n)})
        sim.context.setPositions(positions)
        sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        res = timed_interleaved([lambda s=sim: s.step(1), bare, bridged], args.steps)
        med = [{key: statistics.median(v) * 1e3 for key, v in r.items()} for r in res]
        step = min(res[0]["wall"])
        cols = "".join(f"{min(r['wall']) * 1e3:>9.0f} ({m['wall']:>5.0f}) /{m['user']:>5.0f} /{m['sys']:>4.0f}"
                       for r, m in zip(res, med))
        share = 1 - med[1]["user"] / med[0]["user"]
        steps_by_threads[n] = step
        print(f"{n:>7}{1 / step:>9.3f}{0.5e-6 * 86400 / step:>9.4f}{cols}{100 * share:>14.1f}%", flush=True)
        del sim

    # the parts outside the model, alone: OpenMM without the TorchForce, the bridge around a free model
    torch.set_num_threads(1)
    bare_system = openmm.System()  # (XmlSerializer cannot copy it: openmmtorch 1.5 crashes deserializing)
    bare_system.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
    for i in range(system.getNumParticles()):
        bare_system.addParticle(system.getParticleMass(i))
    bare_system.addForce(openmm.CMMotionRemover())
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    sim = app.Simulation(top, bare_system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(positions)
    t_md = statistics.median(timed_interleaved([lambda: sim.step(100)], 5)[0]["wall"]) / 100

    class Free(torch.nn.Module):
        def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor,
                    pbc: torch.Tensor) -> torch.Tensor:
            return (positions * positions).sum() + cell.sum()

    from mlmd.engines.openmm import OpenMMBridge

    free = torch.jit.script(OpenMMBridge(torch.jit.script(Free()), atoms.numbers.tolist(), None, True, 5.0,
                                         dtype))

    def free_bridge() -> None:
        x = pos_nm.clone().requires_grad_(True)
        torch.autograd.grad(free(x, box_nm), x)

    t_free = statistics.median(timed_interleaved([free_bridge], 20)[0]["wall"])
    fastest = min(steps_by_threads.values())
    print(f"alone, 1 thread: an OpenMM step without the model {t_md * 1e3:.2f} ms; the bridge's own work "
          f"{t_free * 1e3:.2f} ms: {100 * (t_md + t_free) / fastest:.3f}% of the fastest step above")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
