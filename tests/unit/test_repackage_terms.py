"""Repackaging rebuilds the long-range terms with this mlmd's code (mlmd.deploy.rebuild_terms): with the card's
parameters (same checksum, same numbers) or with other Ewald/PME parameters at the same accuracy."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import water_box
from mlmd import ewald_params as ep
from mlmd import keys as K
from mlmd.deploy.export import repackage
from mlmd.deploy.load import load_model
from mlmd.units import COULOMB_EV_A

# the hybrid water model as bundled before this mlmd (Lagrange PME, 8 Å real space, no Verlet lists)
HYBRID = Path(__file__).resolve().parents[2] / "tests" / "data" / "water_model_hybrid_before_cn_entry.pt"
# as bundled before the PME term's positions' gradient skipped the p^3 mesh weights (Verlet lists, B-spline PME)
HYBRID_AUTOGRAD_MESH = HYBRID.with_name("water_model_hybrid_before_mesh_gradient.pt")


def _compute(path: Path, atoms):
    module = load_model(path)[0]
    args = (torch.tensor(atoms.positions, dtype=torch.float32), torch.tensor(atoms.cell.array, dtype=torch.float32),
            torch.tensor(atoms.numbers), torch.tensor([True] * 3), True)
    out = module.compute(*args)
    return float(out["energy"].sum()), out["forces"].double()


def test_coulomb_term_with_another_splitting(tmp_path):
    old_card = load_model(HYBRID)[1]
    accuracy = old_card.long_range.electrostatics.accuracy
    params = ep.choose_parameters(accuracy, "auto", r_cut=6.0, pme_assignment="bspline")
    card = repackage(HYBRID, tmp_path / "new.pt", electrostatics=params)
    elec = card.long_range.electrostatics
    assert elec.r_cut == 6.0 and elec.details["pme_assignment"] == "bspline"
    assert elec.charges == old_card.long_range.electrostatics.charges
    assert card.long_range.dispersion == old_card.long_range.dispersion
    # the short-range weights are the file's: only the Coulomb term's buffers (its splitting) differ
    old_sd, new_sd = load_model(HYBRID)[0].state_dict(), load_model(tmp_path / "new.pt")[0].state_dict()
    for key, value in old_sd.items():
        if not key.startswith("long_range."):
            assert torch.equal(new_sd[key].nan_to_num(123.0), value.nan_to_num(123.0)), key
    atoms = water_box(4, seed=3)
    e_old, f_old = _compute(HYBRID, atoms)
    e_new, f_new = _compute(tmp_path / "new.pt", atoms)
    target = accuracy * COULOMB_EV_A  # the same Coulomb sum within what both splittings promise
    assert abs(e_new - e_old) / len(atoms) <= 2 * target
    assert float((f_new - f_old).pow(2).sum(1).mean().sqrt()) <= 2 * target
    assert float((f_new - f_old).abs().max()) > 0  # the term was rebuilt, not copied


def test_parameters_missing_the_accuracy_are_refused(tmp_path):
    params = ep.choose_parameters(1e-4, "auto", r_cut=6.0, pme_assignment="bspline")
    params["grid_spacing"] = 3.0  # a mesh far too coarse for the splitting
    with pytest.raises(ValueError, match="do not reproduce this file's Coulomb term"):
        repackage(HYBRID, tmp_path / "bad.pt", electrostatics=params)
    assert not (tmp_path / "bad.pt").exists()


def test_same_parameters_keep_the_checksum_and_the_numbers(tmp_path):
    old_card = load_model(HYBRID)[1]
    card = repackage(HYBRID, tmp_path / "same.pt")
    assert card.weights_sha256 == old_card.weights_sha256 and card.long_range == old_card.long_range
    module = load_model(tmp_path / "same.pt")[0]
    assert all(hasattr(t.coulomb, "pairs") for _, t in module.long_range.named_children())
    assert all(hasattr(t.coulomb, "gradients_by_hand") for _, t in module.long_range.named_children())
    # and its D3 the entries that return their derivatives as values (LAMMPS on several ranks)
    by_hand = (K.ENTRY_LOCAL_DISPERSION_CN_SLOPES, K.ENTRY_LOCAL_DISPERSION_BY_HAND)
    assert not any(old_card.provides(e) for e in by_hand) and all(card.provides(e) for e in by_hand)
    assert all(hasattr(t.d3, "hand_derivatives") for _, t in module.dispersion.named_children())
    atoms = water_box(3, seed=4)
    e_old, f_old = _compute(HYBRID, atoms)
    e_new, f_new = _compute(tmp_path / "same.pt", atoms)
    assert abs(e_new - e_old) <= 1e-5 * abs(e_old)
    np.testing.assert_allclose(f_new.numpy(), f_old.numpy(), rtol=0, atol=2e-4)


def test_a_term_differentiating_its_mesh_weights_is_rebuilt(tmp_path):
    """A file whose PME term took its forces by autograd through the p^3 mesh weights gets the term that puts
    the gradient back by hand (and D3 the by-hand graph entries): same checksum and card, the same energy and
    forces to float32 rounding."""
    old_module, old_card = load_model(HYBRID_AUTOGRAD_MESH)
    assert not any(hasattr(t.coulomb, "gradients_by_hand") for _, t in old_module.long_range.named_children())
    card = repackage(HYBRID_AUTOGRAD_MESH, tmp_path / "new.pt")
    assert card.weights_sha256 == old_card.weights_sha256 and card.long_range == old_card.long_range
    module = load_model(tmp_path / "new.pt")[0]
    assert all(hasattr(t.coulomb, "gradients_by_hand") for _, t in module.long_range.named_children())
    # and its D3 the entries that return their derivatives as values (LAMMPS on several ranks)
    by_hand = (K.ENTRY_LOCAL_DISPERSION_CN_SLOPES, K.ENTRY_LOCAL_DISPERSION_BY_HAND)
    assert not any(old_card.provides(e) for e in by_hand) and all(card.provides(e) for e in by_hand)
    atoms = water_box(5, seed=6).repeat((2, 1, 1))  # 750 atoms: above the Ewald/PME switch (500), so PME
    e_old, f_old = _compute(HYBRID_AUTOGRAD_MESH, atoms)
    e_new, f_new = _compute(tmp_path / "new.pt", atoms)
    assert abs(e_new - e_old) <= 1e-6 * abs(e_old)
    np.testing.assert_allclose(f_new.numpy(), f_old.numpy(), rtol=0, atol=2e-5 * float(f_old.abs().max()))
