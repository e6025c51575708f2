"""Reference-data generation for liquid water: classical sampling, electronic-structure labels.

Geometries come from short flexible-water MD in OpenMM (amber14 TIP3P-FB, rigidWater=False) at several
temperatures and densities, plus strained copies of some frames; each frame is labelled with tblite
(GFN2-xTB by default): energy, forces, stress and Mulliken charges. Written as extxyz.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

WATER_MASS_AMU = 18.015
AVOGADRO = 6.02214076e23


@dataclass
class Condition:
    n_molecules: int
    density: float  # g/cm^3
    temperature: float  # K
    n_frames: int


DEFAULT_CONDITIONS = [
    Condition(64, d, t, 7) for d in (0.92, 1.0, 1.08) for t in (300.0, 400.0, 500.0)
] + [Condition(32, 1.0, 300.0, 6), Condition(32, 0.95, 450.0, 6)]


def box_length(n_molecules: int, density: float) -> float:
    """Cubic box edge in Å for n water molecules at a density in g/cm^3."""
    volume_cm3 = n_molecules * WATER_MASS_AMU / AVOGADRO / density
    return (volume_cm3 * 1e24) ** (1.0 / 3.0)


def water_lattice(n_molecules: int, length: float, rng: np.random.Generator) -> Atoms:
    """n randomly oriented water molecules on a cubic grid in a periodic box."""
    from scipy.spatial.transform import Rotation

    n_side = int(np.ceil(n_molecules ** (1 / 3)))
    spacing = length / n_side
    sites = np.array([(i, j, k) for i in range(n_side) for j in range(n_side) for k in range(n_side)], float)
    sites = sites[rng.permutation(len(sites))[:n_molecules]] * spacing + spacing / 2
    angle = np.deg2rad(104.52)
    local = np.array([[0, 0, 0], [0.9572, 0, 0], [0.9572 * np.cos(angle), 0.9572 * np.sin(angle), 0]])
    local -= local.mean(0)
    rots = Rotation.random(n_molecules, random_state=rng.integers(2**31))
    pos = np.concatenate([rots[k].apply(local) + sites[k] for k in range(n_molecules)])
    return Atoms("OH2" * n_molecules, positions=pos, cell=np.eye(3) * length, pbc=True)


def sample_water_md(cond: Condition, rng: np.random.Generator, interval_ps: float = 0.5) -> list[Atoms]:
    """Frames of flexible-water MD (OpenMM) at the condition's density and temperature."""
    import openmm
    from openmm import app, unit

    length = box_length(cond.n_molecules, cond.density)
    atoms = water_lattice(cond.n_molecules, length, rng)
    top = app.Topology()
    chain = top.addChain()
    elements = {"O": app.element.oxygen, "H": app.element.hydrogen}
    for _ in range(cond.n_molecules):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", elements["O"], res)
        h1 = top.addAtom("H1", elements["H"], res)
        h2 = top.addAtom("H2", elements["H"], res)
        top.addBond(o, h1)
        top.addBond(o, h2)
    top.setPeriodicBoxVectors(np.eye(3) * length * 0.1 * unit.nanometer)
    ff = app.ForceField("amber14/tip3pfb.xml")
    cutoff = min(0.9, 0.1 * length / 2 - 0.01)
    system = ff.createSystem(
        top, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer, constraints=None, rigidWater=False
    )
    integ = openmm.LangevinMiddleIntegrator(cond.temperature * unit.kelvin, 2.0 / unit.picosecond, 0.0005)
    integ.setRandomNumberSeed(int(rng.integers(1, 2**30)))
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("CPU"), {"Threads": "2"})
    sim.context.setPositions(atoms.positions * 0.1)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(cond.temperature * unit.kelvin, int(rng.integers(1, 2**30)))
    steps = int(round(interval_ps / 0.0005))
    sim.step(4 * steps)  # equilibrate 2 ps
    frames = []
    for _ in range(cond.n_frames):
        sim.step(steps)
        pos = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        frame = atoms.copy()
        frame.positions = pos
        frame.wrap()
        frame.info["temperature_K"] = cond.temperature
        frame.info["density_g_cm3"] = cond.density
        frames.append(frame)
    return frames


def strained_copies(frames: list[Atoms], rng: np.random.Generator, n: int) -> list[Atoms]:
    """Isotropically compressed/stretched and sheared copies (positions move with the cell)."""
    out = []
    for k in range(n):
        src = frames[int(rng.integers(len(frames)))]
        eps = np.eye(3) * rng.uniform(-0.05, 0.05)
        if k % 2:
            off = rng.uniform(-0.04, 0.04, size=(3, 3))
            eps += 0.5 * (off + off.T) * (1 - np.eye(3))
        a = src.copy()
        a.set_cell(src.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        a.info["strained"] = True
        out.append(a)
    return out


def label(frames: list[Atoms], method: str = "GFN2-xTB", progress: bool = True) -> list[Atoms]:
    """Energy, forces, stress and charges from tblite; frames that fail to converge are dropped (reported)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from tblite.ase import TBLite

    out = []
    t0 = time.time()
    for k, atoms in enumerate(frames):
        a = atoms.copy()
        a.calc = TBLite(method=method, verbosity=0)
        try:
            e = a.get_potential_energy()
            f = a.get_forces()
            s = a.get_stress(voigt=False)
            q = a.calc.results.get("charges")
        except Exception as err:  # SCF failure of one frame should not stop the set
            print(f"  frame {k}: {method} failed ({err}); dropped", flush=True)
            continue
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        if q is not None:
            a.arrays["charges"] = np.asarray(q)
        a.info["method"] = method
        out.append(a)
        if progress:
            el = time.time() - t0
            eta = el / (k + 1) * (len(frames) - k - 1)
            print(f"  labelled {k + 1}/{len(frames)} ({len(a)} atoms) {el:.0f}s, eta {eta:.0f}s", flush=True)
    return out


def generate_water(
    out: str | Path,
    method: str = "GFN2-xTB",
    seed: int = 0,
    conditions: list[Condition] | None = None,
    n_strained: int = 10,
) -> list[Atoms]:
    import ase.io

    rng = np.random.default_rng(seed)
    conditions = conditions or DEFAULT_CONDITIONS
    frames: list[Atoms] = []
    for c in conditions:
        print(f"sampling {c.n_molecules} H2O at {c.density} g/cm3, {c.temperature:.0f} K ...", flush=True)
        frames += sample_water_md(c, rng)
    frames += strained_copies([f for f in frames if len(f) == 192], rng, n_strained)
    print(f"labelling {len(frames)} frames with {method} (tblite)", flush=True)
    labelled = label(frames, method)
    ase.io.write(str(out), labelled, format="extxyz")
    print(f"wrote {len(labelled)} frames to {out}")
    return labelled
