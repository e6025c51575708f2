"""Invariance of the energy and equivariance of forces (float64, round-off level), FD forces and stress."""

import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from conftest import water_box
from mlmd.engines.ase import MLMDCalculator


@pytest.fixture(scope="module")
def calc(model_files):
    return MLMDCalculator(model_files["float64"])


def _ef(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def _molecule_cluster(seed=1):
    rng = np.random.default_rng(seed)
    box = water_box(2, seed)
    a = Atoms(box.numbers, positions=box.positions + rng.normal(0, 0.05, box.positions.shape))
    return a


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-12)


def test_rotation_reflection_translation_nonperiodic(calc):
    a = _molecule_cluster()
    e0, f0 = _ef(a, calc)
    R = Rotation.random(random_state=3).as_matrix()
    for M in (R, -R, np.diag([1.0, 1.0, -1.0])):
        b = a.copy()
        b.positions = a.positions @ M.T + np.array([1.3, -7.1, 2.2])
        e, f = _ef(b, calc)
        assert abs(e - e0) / abs(e0) < 1e-12
        assert rel(f, f0 @ M.T) < 1e-10


def test_rotation_periodic_cell(calc):
    a = water_box(2, 2)
    e0, f0 = _ef(a, calc)
    R = Rotation.random(random_state=5).as_matrix()
    b = a.copy()
    b.set_cell(a.cell.array @ R.T)
    b.positions = a.positions @ R.T
    e, f = _ef(b, calc)
    assert abs(e - e0) / abs(e0) < 1e-12
    assert rel(f, f0 @ R.T) < 1e-10


def test_permutation_of_same_species(calc):
    a = water_box(2, 4)
    e0, f0 = _ef(a, calc)
    perm = np.random.default_rng(0).permutation(len(a))
    b = a[perm]
    e, f = _ef(b, calc)
    assert abs(e - e0) / abs(e0) < 1e-12
    assert rel(f, f0[perm]) < 1e-10


def test_periodic_image_and_cell_origin(calc):
    a = water_box(2, 6)
    e0, f0 = _ef(a, calc)
    # move atoms to other periodic images
    b = a.copy()
    shifts = np.random.default_rng(1).integers(-2, 3, size=(len(a), 3))
    b.positions = a.positions + shifts @ a.cell.array
    e, f = _ef(b, calc)
    assert abs(e - e0) / abs(e0) < 1e-12 and rel(f, f0) < 1e-10
    # shift the origin of the cell (translate and wrap)
    c = a.copy()
    c.positions += np.array([0.37, 1.91, -2.5])
    c.wrap()
    e, f = _ef(c, calc)
    assert abs(e - e0) / abs(e0) < 1e-12 and rel(f, f0) < 1e-10
    # an equivalent, differently chosen cell: a sheared basis of the same lattice
    d = a.copy()
    cell = a.cell.array.copy()
    d.set_cell(np.array([cell[0], cell[1] + cell[0], cell[2] - cell[1]]), scale_atoms=False)
    d.wrap()
    e, f = _ef(d, calc)
    assert abs(e - e0) / abs(e0) < 1e-12 and rel(f, f0) < 1e-10


def test_supercell_is_extensive(calc):
    a = water_box(2, 7)
    e0, _ = _ef(a, calc)
    e, _ = _ef(a.repeat((2, 1, 1)), calc)
    assert abs(e - 2 * e0) / abs(e0) < 1e-12


def test_forces_match_finite_differences(calc):
    a = water_box(2, 8)
    a.positions += np.random.default_rng(2).normal(0, 0.05, a.positions.shape)
    _, f = _ef(a, calc)
    h = 1e-4
    for atom, axis in [(0, 0), (1, 2), (5, 1), (17, 0)]:
        p, m = a.copy(), a.copy()
        p.positions[atom, axis] += h
        m.positions[atom, axis] -= h
        fd = -(_ef(p, calc)[0] - _ef(m, calc)[0]) / (2 * h)
        assert abs(fd - f[atom, axis]) < 1e-7 * max(1.0, abs(fd))


def test_stress_matches_finite_differences(calc):
    a = water_box(2, 9)
    a.set_cell(a.cell.array + np.array([[0, 0.3, 0.1], [0.2, 0, -0.2], [0.1, 0.1, 0]]), scale_atoms=True)
    a.calc = calc
    s = a.get_stress(voigt=False)
    h = 1e-5
    vol = a.get_volume()
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        eps = np.zeros((3, 3))
        eps[i, j] += h / 2
        eps[j, i] += h / 2
        es = []
        for sign in (1, -1):
            b = a.copy()
            b.set_cell(a.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            es.append(_ef(b, calc)[0])
        fd = (es[0] - es[1]) / (2 * h) / vol
        assert abs(fd - s[i, j]) < 1e-8 + 1e-6 * abs(fd)
