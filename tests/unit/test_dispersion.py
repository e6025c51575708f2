"""DFT-D3(BJ) dispersion (mlmd.model.dispersion) against simple-dftd3 and finite differences.

simple-dftd3 (PyPI ``dftd3``, its Python API) is an independent implementation: energies, forces and stress
must agree to 1e-7 eV for molecules and periodic cells, with and without the three-body term, with the same
cutoffs. Forces and stress are also checked against central finite differences.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from dftd3_reference import reference

from conftest import water_box
from mlmd.model.d3_parameters import D3BJ_PARAMETERS, GFN2_PARAMETERS, d3_cutoffs_angstrom
from mlmd.model.dispersion import D3Dispersion
from mlmd.units import BOHR_TO_ANGSTROM

dftd3_interface = pytest.importorskip("dftd3.interface")

DT = torch.float64
TOL = 1e-7  # eV, eV/Å, eV per cell for the stress


def cr_co6() -> Atoms:
    """Octahedral Cr(CO)6: a transition metal with several D3 reference systems."""
    pos = [[0.0, 0.0, 0.0]]
    symbols = ["Cr"]
    for axis in range(3):
        for sign in (1.0, -1.0):
            for element, dist in (("C", 1.91), ("O", 1.91 + 1.14)):
                p = [0.0, 0.0, 0.0]
                p[axis] = sign * dist
                pos.append(p)
                symbols.append(element)
    atoms = Atoms(symbols, positions=pos)
    atoms.rattle(0.02, seed=7)
    return atoms


def skew(atoms: Atoms, seed: int = 0) -> Atoms:
    atoms = atoms.copy()
    c = np.asarray(atoms.cell.array).copy()
    c[1] += 0.25 * c[0]
    c[2] += 0.15 * c[0] - 0.2 * c[1]
    atoms.set_cell(c, scale_atoms=False)
    atoms.wrap()
    atoms.rattle(0.05, seed=seed)
    return atoms


def cu_slab() -> Atoms:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.pbc = [True, True, False]  # periodic in the surface plane only
    slab.rattle(0.03, seed=1)
    return slab


def evaluate(module, atoms: Atoms):
    """Our energy, forces = -dE/dR and stress = (1/V) dE/d(strain) by autograd."""
    pos = torch.tensor(atoms.positions, dtype=DT, requires_grad=True)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    strain = torch.zeros(3, 3, dtype=DT, requires_grad=True)
    sym = 0.5 * (strain + strain.T)
    e = module(pos + pos @ sym, cell + cell @ sym, torch.tensor(atoms.numbers), torch.tensor(atoms.pbc))
    g_pos, g_strain = torch.autograd.grad(e, [pos, strain])
    stress = (g_strain / atoms.get_volume()).numpy() if atoms.pbc.any() else None
    return float(e.detach()), -g_pos.numpy(), stress


def compare(atoms, module, param, cutoffs=None):
    e0, f0, s0 = reference(atoms, param, cutoffs)
    e1, f1, s1 = evaluate(module, atoms)
    assert abs(e1 - e0) < TOL, (e1, e0)
    assert np.abs(f1 - f0).max() < TOL
    if s0 is not None:
        assert np.abs(s1 - s0).max() * atoms.get_volume() < TOL
    assert abs(e0) > 1e-3  # a real comparison


def species(atoms: Atoms) -> list[int]:
    return sorted(set(int(z) for z in atoms.numbers))


MOLECULES = {
    "H2O": molecule("H2O"),
    "C6H6": molecule("C6H6"),
    "CH3CH2OH": molecule("CH3CH2OH"),
    "CCl4": molecule("CCl4"),
    "SiH4": molecule("SiH4"),
    "Cr(CO)6": cr_co6(),
}


@pytest.mark.parametrize("name", list(MOLECULES))
@pytest.mark.parametrize("functional,three_body", [("pbe", False), ("b3lyp", True), ("r2scan", True)])
def test_molecules_match_simple_dftd3(name, functional, three_body):
    atoms = MOLECULES[name]
    module = D3Dispersion(species(atoms), functional, three_body=three_body).to(DT)
    compare(atoms, module, {"method": functional, "atm": three_body})


def test_gfn2_damping_and_explicit_parameters_match_simple_dftd3():
    atoms = MOLECULES["CH3CH2OH"]
    module = D3Dispersion(species(atoms), "gfn2", three_body=True).to(DT)
    p = GFN2_PARAMETERS
    compare(atoms, module, {"s6": p["s6"], "s8": p["s8"], "a1": p["a1"], "a2": p["a2"], "s9": p["s9"]})
    custom = D3Dispersion(species(atoms), "pbe", s8=1.1, a1=0.45, a2=4.0, s9=0.7, three_body=True).to(DT)
    compare(atoms, custom, {"s6": 1.0, "s8": 1.1, "a1": 0.45, "a2": 4.0, "s9": 0.7})


def test_every_parameter_set_matches_simple_dftd3():
    """Each functional of the table gives simple-dftd3's energy for that functional (checks the table)."""
    atoms = MOLECULES["C6H6"]
    for functional in D3BJ_PARAMETERS:
        module = D3Dispersion(species(atoms), functional).to(DT)
        e0 = reference(atoms, {"method": functional, "atm": False})[0]
        e1 = float(module(torch.tensor(atoms.positions, dtype=DT), torch.zeros(3, 3, dtype=DT),
                          torch.tensor(atoms.numbers), torch.tensor(atoms.pbc)))
        assert abs(e1 - e0) < TOL, functional


SMALL = {"cutoff": 15.0, "cutoff_three_body": 8.0, "cutoff_cn": 10.0}
PERIODIC = {
    # name: (structure, cutoffs in Å or None for the standard ones, three-body term)
    "NaCl_primitive": (skew(bulk("NaCl", "rocksalt", a=5.64), 1), None, False),
    "Si_diamond": (skew(bulk("Si", "diamond", a=5.43), 2), None, False),
    "Cu_fcc": (skew(bulk("Cu", "fcc", a=3.61).repeat((2, 1, 1)), 3), None, False),
    "water_triclinic": (skew(water_box(2, 3), 4), None, False),
    "Cu_slab_2d": (cu_slab(), None, False),
    "NaCl_atm": (skew(bulk("NaCl", "rocksalt", a=5.64), 5), SMALL, True),
    "Si_atm": (skew(bulk("Si", "diamond", a=5.43), 6), SMALL, True),
}


@pytest.mark.parametrize("name", list(PERIODIC))
def test_periodic_cells_match_simple_dftd3(name):
    atoms, cutoffs, three_body = PERIODIC[name]
    module = D3Dispersion(species(atoms), "pbe", three_body=three_body, **(cutoffs or {})).to(DT)
    compare(atoms, module, {"method": "pbe", "atm": three_body}, cutoffs or d3_cutoffs_angstrom())


def test_pairwise_c6_path_matches_the_dense_one():
    """Large systems get C6 per pair instead of from the dense N x N matrix: same numbers."""
    atoms, cutoffs, _ = PERIODIC["water_triclinic"]
    kw = {"cutoff": 12.0, "cutoff_cn": 8.0, "cutoff_three_body": 6.0}
    dense = evaluate(D3Dispersion([1, 8], "pbe", three_body=True, **kw).to(DT), atoms)
    pairs = evaluate(D3Dispersion([1, 8], "pbe", three_body=True, dense_c6_max_atoms=0, **kw).to(DT), atoms)
    assert abs(dense[0] - pairs[0]) < 1e-12
    assert np.abs(dense[1] - pairs[1]).max() < 1e-12
    compare(atoms, D3Dispersion([1, 8], "pbe", three_body=True, dense_c6_max_atoms=0, **kw).to(DT),
            {"method": "pbe", "atm": True}, kw)


def cutoff_in_gap(distances: np.ndarray, target: float) -> float:
    """A cutoff near ``target`` halfway between two pair distances, so finite differences cross none."""
    d = np.sort(distances[(distances > target - 1.0) & (distances < target + 1.0)])
    gaps = np.diff(d)
    k = int(np.argmax(gaps - 0.1 * np.abs(0.5 * (d[1:] + d[:-1]) - target)))
    assert gaps[k] > 1e-3
    return float(0.5 * (d[k] + d[k + 1]))


def test_forces_and_stress_match_finite_differences():
    atoms = skew(bulk("Si", "diamond", a=5.43).repeat((2, 1, 1)), 8)
    atoms.numbers[1] = 6  # SiC-like: two elements
    from ase.neighborlist import neighbor_list

    distances = neighbor_list("d", atoms, 13.0)
    cutoffs = {
        "cutoff": cutoff_in_gap(distances, 12.0),
        "cutoff_cn": cutoff_in_gap(distances, 9.0),
        "cutoff_three_body": cutoff_in_gap(distances, 6.0),
    }
    module = D3Dispersion([6, 14], "pbe", three_body=True, **cutoffs).to(DT)
    e, f, s = evaluate(module, atoms)
    pos0 = torch.tensor(atoms.positions, dtype=DT)
    cell0 = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    numbers = torch.tensor(atoms.numbers)
    pbc = torch.tensor(atoms.pbc)

    def energy(p, c):
        return float(module(p, c, numbers, pbc))

    h = 1e-4
    for a in range(len(atoms)):
        for k in range(3):
            dp = torch.zeros_like(pos0)
            dp[a, k] = h
            fd = -(energy(pos0 + dp, cell0) - energy(pos0 - dp, cell0)) / (2 * h)
            assert abs(fd - f[a, k]) < 1e-7, (a, k, fd, f[a, k])
    hs = 1e-5
    volume = atoms.get_volume()
    for a in range(3):
        for b in range(a, 3):
            eps = torch.zeros(3, 3, dtype=DT)
            eps[a, b] = eps[b, a] = hs / (1 if a == b else 2)
            fd = (energy(pos0 + pos0 @ eps, cell0 + cell0 @ eps) - energy(pos0 - pos0 @ eps, cell0 - cell0 @ eps))
            fd = fd / (2 * hs) / volume
            assert abs(fd - s[a, b]) * volume < 1e-7, (a, b, fd, s[a, b])
    assert np.abs(f).max() > 1e-3 and np.abs(s).max() > 1e-4  # nonzero: a real check
    # molecule with the three-body term: forces
    mol = MOLECULES["Cr(CO)6"]
    module = D3Dispersion(species(mol), "b3lyp", three_body=True).to(DT)
    e, f, _ = evaluate(module, mol)
    pos0 = torch.tensor(mol.positions, dtype=DT)
    numbers = torch.tensor(mol.numbers)
    for a in (0, 1, 6):
        for k in range(3):
            dp = torch.zeros_like(pos0)
            dp[a, k] = h
            ep = float(module(pos0 + dp, cell0, numbers, torch.tensor(mol.pbc)))
            em = float(module(pos0 - dp, cell0, numbers, torch.tensor(mol.pbc)))
            assert abs(-(ep - em) / (2 * h) - f[a, k]) < 1e-7


def test_element_without_d3_reference_is_refused():
    with pytest.raises(ValueError, match=r"element Rf \(Z=104\) has no DFT-D3 reference data"):
        D3Dispersion([1, 8, 104])
    module = D3Dispersion([1, 8]).to(DT)
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=DT)
    cell = torch.zeros(3, 3, dtype=DT)
    no_pbc = torch.tensor([False, False, False])
    with pytest.raises(ValueError, match=r"element Db \(Z=105\) has no DFT-D3 reference data"):
        module(pos, cell, torch.tensor([1, 105]), no_pbc)
    with pytest.raises(ValueError, match=r"element C \(Z=6\) is not among this D3 term's elements"):
        module(pos, cell, torch.tensor([1, 6]), no_pbc)
    scripted = torch.jit.script(module)
    with pytest.raises(torch.jit.Error, match=r"element Db \(Z=105\) has no DFT-D3 reference data"):
        scripted(pos, cell, torch.tensor([1, 105]), no_pbc)
    with pytest.raises(ValueError, match="no D3\\(BJ\\) parameters for functional 'pbe7'"):
        D3Dispersion([1], "pbe7")
    with pytest.raises(ValueError, match="same position"):
        module(torch.zeros(2, 3, dtype=DT), cell, torch.tensor([1, 8]), no_pbc)
    with pytest.raises(ValueError, match="zero volume"):
        module(pos, cell, torch.tensor([1, 8]), torch.tensor([True, True, True]))


def test_torchscript_round_trip_and_metadata(tmp_path: Path):
    atoms, _, _ = PERIODIC["water_triclinic"]
    mol = MOLECULES["CH3CH2OH"]
    for three_body in (False, True):
        kw = {"cutoff": 12.0, "cutoff_cn": 8.0, "cutoff_three_body": 5.0}
        module = D3Dispersion([1, 6, 8], "pbe", three_body=three_body, **kw).to(DT)
        path = tmp_path / f"d3_{three_body}.pt"
        torch.jit.script(module).save(str(path))
        loaded = torch.jit.load(str(path))
        for a in (atoms, mol):
            args = (torch.tensor(a.positions, dtype=DT), torch.tensor(np.asarray(a.cell.array), dtype=DT),
                    torch.tensor(a.numbers), torch.tensor(a.pbc))
            assert float(loaded(*args)) == float(module(*args))
            assert torch.equal(loaded.atomic_energies(*args), module.atomic_energies(*args))
        meta = json.loads(json.dumps(module.metadata()))
        assert meta["kind"] == "d3bj" and meta["three_body"] == three_body
        assert abs(meta["cutoff"] - 12.0) < 1e-12 and abs(meta["cutoff_bohr"] * BOHR_TO_ANGSTROM - 12.0) < 1e-12
    standard = D3Dispersion([1, 8]).metadata()
    assert standard["cutoff_bohr"] == 60.0 and standard["cutoff_cn_bohr"] == 40.0
    assert standard["cutoff_three_body_bohr"] == 40.0
    # float32 is close to float64
    args = (torch.tensor(mol.positions), torch.zeros(3, 3), torch.tensor(mol.numbers), torch.tensor(mol.pbc))
    e64 = float(D3Dispersion([1, 6, 8]).to(DT)(args[0].to(DT), args[1].to(DT), args[2], args[3]))
    e32 = float(D3Dispersion([1, 6, 8]).to(torch.float32)(args[0].float(), args[1].float(), args[2], args[3]))
    assert abs(e32 - e64) < 1e-5 * abs(e64)
