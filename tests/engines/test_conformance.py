"""The contract every engine adapter keeps, parametrised over the adapters and the kinds of packaged model.

Each adapter (OpenMM through openmm-torch, LAMMPS through pair_style mlmd on 1 and 2 ranks) is called exactly as
`mlmd validate` calls it (mlmd.validate.engines), on validate's own configurations for the model (a cubic and a
triclinic periodic box and a cluster), and must give the energy, forces and stress of the ASE calculator (the
reference adapter: it runs the packaged model's whole-system entry) within the card's tolerances. Every model is
written by `package`, so its card is built by the typed ModelCard, never forged. An adapter must also refuse an
element the model does not know, naming it. A new engine adapter joins by adding itself to validate.engines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

import mlmd.validate as V
import mlmd.validate_structures as S
from conftest import make_bp, make_potential
from mlmd.deploy.export import package
from mlmd.deploy.load import read_card
from mlmd.model.ensemble import EnsemblePotential
from mlmd.model.longrange import CoulombTerm

pytestmark = [pytest.mark.lammps, pytest.mark.openmm]

ADAPTERS = V.engines(nprocs=(1, 2))  # {"openmm": ..., "lammps 1 rank": ..., "lammps 2 ranks": ...}


KINDS = {
    "equivariant float64": lambda: (make_potential(seed=11), {}),
    "equivariant float32": lambda: (make_potential(seed=12, dtype=torch.float32), {}),
    "behler-parrinello float64": lambda: (make_bp("bp-acsf", seed=4), {}),
    "committee float64": lambda: (EnsemblePotential([make_potential(seed=k) for k in (13, 14)]), {}),
    "fixed charges + Ewald float64": lambda: (make_potential(seed=15),
                                              {"long_range": [CoulombTerm({8: -0.8, 1: 0.4}, accuracy=1e-6)]}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("conformance")
    out = {}
    for i, (kind, build) in enumerate(KINDS.items()):
        pot, kw = build()
        out[kind] = d / f"model_{i}.pt"
        package(pot, out[kind], **kw)
    return out


@pytest.fixture(scope="module")
def references(models) -> dict:
    """ASE's result per (kind, configuration), computed once for all adapters."""
    out = {}
    for kind, path in models.items():
        card = read_card(path)
        for name, atoms in S.configurations(card, seed=1):
            if card.requires_periodic and not bool(np.all(atoms.pbc)):
                continue  # a model with Ewald needs a lattice (validate skips the cluster likewise)
            out[kind, name] = (atoms, V.run_ase(atoms, path))
    return out


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_matches_the_reference(adapter, kind, models, references):
    card = read_card(models[kind])
    tol = V.tolerances(card)
    cases = [(name, atoms, ref) for (k, name), (atoms, ref) in references.items() if k == kind]
    assert len(cases) >= 2
    for name, atoms, ref in cases:
        row = V.Row(adapter, name, len(atoms))
        V.compare(ref, ADAPTERS[adapter](atoms, models[kind]), row)
        assert tol.check(row, ref), (name, row)
        assert np.abs(ref.forces).max() > 1e-3  # the forces compared are not trivially zero


@pytest.mark.parametrize("adapter", ["ase", *ADAPTERS])
def test_adapter_refuses_an_element_the_model_lacks(adapter, models):
    atoms = Atoms("OHHCu", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [3.0, 3.0, 3.0]],
                  cell=[9.0, 9.0, 9.0], pbc=True)
    run = V.run_ase if adapter == "ase" else ADAPTERS[adapter]
    with pytest.raises(Exception, match="Cu"):
        run(atoms, models["equivariant float64"])
