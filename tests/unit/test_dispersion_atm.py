"""D3 three-body (ATM) term at the standard 40-bohr cutoff: simple-dftd3, finite differences, bounded memory.

The triples are evaluated in chunks with analytic first derivatives (mlmd.model.dispersion_atm), so the
checks here are: the energy, forces and stress of periodic graphite, ice and Cu against simple-dftd3 with ATM
at its default cutoffs; forces and stress against finite differences (also through the per-pair C6 path);
results independent of the chunk size; peak memory of a dense cell far below what all triples at once need.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from test_dispersion import DT, cutoff_in_gap, evaluate, reference, species

from mlmd.model.d3_parameters import d3_cutoffs_angstrom
from mlmd.model.dispersion import D3Dispersion

pytest.importorskip("dftd3.interface")
REPO = Path(__file__).resolve().parents[2]


def graphite(rattle: float = 0.02, seed: int = 0) -> Atoms:
    a, c = 2.46, 6.70
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]]
    frac = [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    atoms = Atoms("C4", scaled_positions=frac, cell=cell, pbc=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def ice_ic(a: float = 6.35, rattle: float = 0.02, seed: int = 0) -> Atoms:
    """Proton-ordered cubic ice: two waters in the fcc primitive cell, O on a diamond lattice, O-H 1 Å."""
    cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    o1, o2 = np.zeros(3), np.full(3, a / 4)
    d = 1.0 / np.sqrt(3)
    pos = [o1, o1 + d * np.array([1, -1, -1]), o1 + d * np.array([-1, 1, -1]),
           o2, o2 + d * np.array([-1, -1, -1]), o2 + d * np.array([1, 1, -1])]
    atoms = Atoms("OHHOHH", positions=pos, cell=cell, pbc=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def copper() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 1, 1))
    atoms.rattle(0.03, seed=0)
    return atoms


CRYSTALS = {"graphite": graphite, "ice_Ic": ice_ic, "Cu_fcc": copper}


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_atm_at_standard_cutoffs_matches_simple_dftd3(name):
    atoms = CRYSTALS[name]()
    n = len(atoms)
    e0, f0, s0 = reference(atoms, {"method": "pbe", "atm": True}, d3_cutoffs_angstrom())
    e_2body = reference(atoms, {"method": "pbe", "atm": False}, d3_cutoffs_angstrom())[0]
    module = D3Dispersion(species(atoms), "pbe", three_body=True).to(DT)
    e1, f1, s1 = evaluate(module, atoms)
    assert abs(e1 - e0) / n < 1e-8, (e1 - e0) / n
    assert np.abs(f1 - f0).max() < 1e-8
    assert np.abs(s1 - s0).max() * atoms.get_volume() < 1e-7
    assert abs(e0 - e_2body) / n > 1e-3  # the ATM term is there (1.3-71 meV/atom here)


def fd_check(module, atoms, h=1e-4, hs=1e-5, tol=1e-7, every=1):
    """Forces (of every `every`-th atom) and stress against central differences of the energy."""
    _, f, s = evaluate(module, atoms)
    pos0 = torch.tensor(atoms.positions, dtype=DT)
    cell0 = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    numbers, pbc = torch.tensor(atoms.numbers), torch.tensor(atoms.pbc)

    def energy(p, c):
        return float(module(p, c, numbers, pbc))

    for a in range(0, len(atoms), every):
        for k in range(3):
            dp = torch.zeros_like(pos0)
            dp[a, k] = h
            fd = -(energy(pos0 + dp, cell0) - energy(pos0 - dp, cell0)) / (2 * h)
            assert abs(fd - f[a, k]) < tol, (a, k, fd, f[a, k])
    volume = atoms.get_volume()
    for a in range(3):
        for b in range(a, 3):
            eps = torch.zeros(3, 3, dtype=DT)
            eps[a, b] = eps[b, a] = hs / (1 if a == b else 2)
            fd = energy(pos0 + pos0 @ eps, cell0 + cell0 @ eps) - energy(pos0 - pos0 @ eps, cell0 - cell0 @ eps)
            assert abs(fd / (2 * hs) - s[a, b] * volume) < tol, (a, b)
    assert np.abs(f).max() > 1e-3


@pytest.mark.parametrize("dense, frozen", [(True, False), (False, False), (True, True), (False, True)])
def test_atm_forces_and_stress_match_finite_differences(dense, frozen):
    """ATM alone (s6 = s8 = 0) on skewed ice, cutoffs between pair distances so no pair crosses one; also the
    scripted module frozen as openmm-torch freezes it (freezing drops detach(), which the derivatives by hand
    must not rely on)."""
    atoms = ice_ic(rattle=0.08, seed=3)
    c = np.asarray(atoms.cell.array).copy()
    c[2] += 0.2 * c[0]
    atoms.set_cell(c, scale_atoms=True)
    d = neighbor_list("d", atoms, 11.0)
    kw = {"cutoff": cutoff_in_gap(d, 7.0), "cutoff_cn": cutoff_in_gap(d, 6.0),
          "cutoff_three_body": cutoff_in_gap(d, 9.0)}
    module = D3Dispersion([1, 8], "pbe", s6=0.0, s8=0.0, three_body=True, dense_c6_max_atoms=8000 if dense else 0,
                          atm_chunk=5000, **kw).to(DT)
    if frozen:
        module = torch.jit.freeze(torch.jit.script(module).eval())
    fd_check(module, atoms)


def test_chunk_size_changes_nothing():
    atoms = ice_ic(rattle=0.05, seed=1)
    kw = {"cutoff": 12.0, "cutoff_cn": 10.0, "cutoff_three_body": 12.0}
    results = [evaluate(D3Dispersion([1, 8], "pbe", three_body=True, atm_chunk=chunk, **kw).to(DT), atoms)
               for chunk in (1, 997, 1 << 22)]
    for e, f, s in results[:2]:
        assert abs(e - results[2][0]) < 1e-12
        assert np.abs(f - results[2][1]).max() < 1e-12
        assert np.abs(s - results[2][2]).max() < 1e-12
    scripted = torch.jit.script(D3Dispersion([1, 8], "pbe", three_body=True, atm_chunk=997, **kw).to(DT))
    assert abs(evaluate(scripted, atoms)[0] - results[2][0]) < 1e-12


MEMORY_CHILD = r"""
import json, resource, sys
import numpy as np, torch
sys.path[:0] = sys.argv[1:]
from test_dispersion_atm import graphite
from test_dispersion import evaluate
from mlmd.model.dispersion import D3Dispersion
torch.set_num_threads(1)
atoms = graphite()
module = D3Dispersion([6], "pbe", three_body=True, atm_chunk=1 << 16).to(torch.float64)
evaluate(D3Dispersion([6], "pbe").to(torch.float64), atoms)  # two-body only: the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
e = evaluate(module, atoms)[0]
print(json.dumps({"extra_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "e": e}))
"""


def test_atm_memory_is_bounded_by_the_chunk():
    """4-atom graphite at the 40-bohr ATM cutoff: ~1e7 triples (all at once with autograd: gigabytes)."""
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, here, str(REPO / "tests")], capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["extra_mb"] < 150, out
