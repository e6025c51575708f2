"""The once-per-run accuracy check's pieces (mlmd.ewald_params): the structure-level estimate the OpenMM bridge runs
inside TorchScript equals check_accuracy's, and the warning text reads the same from Python and TorchScript."""

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlmd import ewald_params as ep
from mlmd.units import COULOMB_EV_A


def _sums(atoms, q):
    cell = np.asarray(atoms.cell.array)
    lengths = [float(x) for x in np.linalg.norm(cell, axis=1)]
    return float(np.sum(q**2)), len(q), abs(float(np.linalg.det(cell))), lengths, ep.perpendicular_heights(cell)


@pytest.mark.parametrize("method,assignment", [("ewald", "lagrange"), ("pme", "lagrange"), ("auto", "lagrange"),
                                               ("pme", "bspline")])
def test_structure_force_error_is_check_accuracys_estimate(method, assignment):
    atoms = bulk("ZnO", "wurtzite", a=3.25, c=5.21).repeat((3, 3, 2))
    q = np.where(atoms.numbers == 30, 2.0, -2.0)
    # auto: PME for these 72 atoms
    params = ep.choose_parameters(1e-4, method, ewald_max_atoms=50, pme_assignment=assignment)
    with pytest.warns(UserWarning, match="exceeds the target"):
        err = ep.check_accuracy(params, q, atoms.cell.array)
    args = (*_sums(atoms, q), params["smearing"], params["r_cut"], params["k_cutoff"], params["grid_spacing"],
            params["interpolation_order"], params["method"], params["ewald_max_atoms"], params["max_memory"],
            params.get("pme_assignment", "lagrange"))
    assert COULOMB_EV_A * ep.structure_force_error(*args) == pytest.approx(err, rel=1e-14)
    scripted = torch.jit.script(ep.structure_force_error)
    assert COULOMB_EV_A * scripted(*args) == pytest.approx(err, rel=1e-14)


def test_no_warning_at_the_target_and_the_message_names_the_numbers():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    q = np.where(atoms.numbers == 11, 1.0, -1.0)
    params = ep.choose_parameters(1e-5, "ewald", charges=q, cell=atoms.cell.array)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = ep.check_accuracy(params, q, atoms.cell.array)
    assert err == pytest.approx(1e-5 * COULOMB_EV_A, rel=1e-9)
    text = ep.inaccuracy_message(2.346e-3, 1.44e-3, 1e-4, "do this")
    assert "2.35e-3 eV/Å exceeds the target 1.44e-3 eV/Å" in text and text.endswith("Fix: do this")
    assert torch.jit.script(ep.inaccuracy_message)(2.346e-3, 1.44e-3, 1e-4, "do this") == text
    for x in [9.996e-5, 1.0, 123456.0, 1e-12]:
        shown = ep._sci(x)
        assert float(shown) == pytest.approx(x, rel=6e-3) and len(shown.split("e")[0]) == 4, shown
    assert ep._gb(4.15e9) == "4.15 GB" and ep._gb(1.5e5) == "0.15 MB"
    assert torch.jit.script(ep._gb)(1.9169e13) == "19169.00 GB"  # str(float) in TorchScript prints every digit
