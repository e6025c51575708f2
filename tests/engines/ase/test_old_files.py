"""Model files packaged by earlier mlmd versions keep running in the ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REPO, water_box
from mlmd.deploy.load import load_model
from mlmd.engines.ase import MLMDCalculator

OLD_FILES = [
    REPO / "tests" / "data" / "model_mlmd_0.1.0.pt",
    # a hybrid whose module lost its fixed-charge table in an earlier repackage (its card keeps it): the
    # calculator's once-per-run accuracy check reads the charges from the card
    REPO / "tests" / "data" / "water_model_hybrid_before_d3_entry.pt",
]


@pytest.mark.parametrize("path", OLD_FILES, ids=lambda p: p.name)
def test_old_file_in_ase_equals_its_own_compute(path):
    atoms = water_box(3, seed=2)
    module, card = load_model(path)
    dtype = getattr(torch, card.dtype)
    out = module.compute(torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.cell.array, dtype=dtype),
                         torch.tensor(atoms.numbers), torch.tensor([True] * 3), False)
    atoms.calc = MLMDCalculator(path)
    assert atoms.get_potential_energy() == pytest.approx(float(out["energy"]), rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), out["forces"].double().numpy(), rtol=0, atol=1e-5)
