"""Frames where a water model goes wrong in NVE, labelled with GFN2-xTB: training data that fixes it.

    python inputs/water/refine/harvest_nve.py MODEL.pt OUT.xyz --runs 8 --seed 0

The bundled model was first trained on TIP3P-FB geometries only (inputs/water/water_gfn2.xyz). Run by itself in NVE
it finds configurations that data never showed (stretched O-H bonds, close H...H contacts), where it predicts too
low an energy: the run heats up and collapses (benchmarks/long_run_first_model_nve.json). This script starts
`--runs` NVE trajectories (velocity Verlet, 0.5 fs, ASE with the packaged model) from TIP3P-FB-equilibrated
36-molecule boxes at 300 K, keeps a frame every `--every` steps while the run is still plausible (kinetic
temperature below --max-temperature, no two atoms closer than --min-distance), stops a run when it no longer is or
after --steps, and labels up to --per-run frames per run (evenly spaced, weighted to the end of the run, where the
model is furthest from its data) with GFN2-xTB (tblite). Seeded, but not bitwise reproducible (the TIP3P-FB
sampling runs OpenMM on 2 threads).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def nve_frames(model: str, start, steps: int, every: int, max_t: float, min_dist: float, seed: int) -> tuple:
    """Plausible frames of one NVE run and the step where it stopped (or `steps`)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from mlmd.data.structures import closest_distance
    from mlmd.engines.ase import MLMDCalculator

    atoms = start.copy()
    atoms.calc = MLMDCalculator(model, threads=1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    frames = []
    for step in range(0, steps + 1, every):
        if step:
            try:
                dyn.run(every)
            except Exception as err:  # the model's own failure checks (atoms too close, non-finite)
                print(f"    stopped at step {step}: {str(err).splitlines()[0][:120]}", flush=True)
                return frames, step
        t = atoms.get_temperature()
        d = closest_distance(atoms)
        if t > max_t or d < min_dist:
            print(f"    step {step}: T {t:.0f} K, closest pair {d:.2f} Å: stop", flush=True)
            return frames, step
        frame = atoms.copy()
        frame.calc = None
        frame.info.update(source="nve_harvest", step=step, model_temperature_K=round(float(t), 1))
        frames.append(frame)
    return frames, steps


def pick(frames: list, n: int) -> list:
    """n frames, denser towards the end of the run (quadratic spacing), never the starting frame."""
    if len(frames) <= 1:
        return []
    idx = np.unique(np.round((len(frames) - 1) * np.sqrt(np.linspace(0, 1, n + 1)[1:])).astype(int))
    return [frames[i] for i in idx if i > 0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--per-run", type=int, default=6)
    ap.add_argument("--max-temperature", type=float, default=700.0)
    ap.add_argument("--min-distance", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import ase.io

    from mlmd.data.generate import Condition, label, sample_water_md

    rng = np.random.default_rng(args.seed)
    picked = []
    for k in range(args.runs):
        start = sample_water_md(Condition(36, 1.0, 300.0, 1), rng)[0]
        frames, stop = nve_frames(args.model, start, args.steps, args.every, args.max_temperature,
                                  args.min_distance, int(rng.integers(2**31)))
        chosen = pick(frames, args.per_run)
        print(f"run {k}: {len(frames)} plausible frames up to step {stop}; labelling {len(chosen)}", flush=True)
        picked += chosen
    labelled = label(picked)
    ase.io.write(args.out, labelled, format="extxyz")
    print(f"wrote {len(labelled)} labelled frames to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
