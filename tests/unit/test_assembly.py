"""The energy assembly is one module for training and serving: what the trainer computes on a batch (its
predictions plus the fixed long-range terms it subtracted from the labels) equals what the packaged file serves,
for fixed charges + D3 and predicted charges + D3, energies, forces, stress and charges.

The two sides build their graphs independently (the data pipeline's full neighbour list for a batch of
structures; the file's own half list with mirrored edges for one structure), and the trainer's long-range
labels come from mlmd.model.longrange.long_range_labels (its own strain derivative), so a term counted twice,
left out, or evaluated on other positions or cells shows here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import REPO, make_potential, water_box
from mlmd.data.graph import GraphCache, collate
from mlmd.data.structures import structure_from_atoms
from mlmd.deploy.export import package, repackage
from mlmd.deploy.load import load_model
from mlmd.deploy.packaged import PackagedModel
from mlmd.engines.ase import MLMDCalculator
from mlmd.model.assembly import EnergyAssembly
from mlmd.model.longrange import CoulombTerm, DispersionTerm, long_range_labels
from mlmd.model.predicted_charges import PredictedCoulombTerm
from mlmd.train.dataset import predict_batch, z_to_species_table

FIXED = {1: 0.4, 8: -0.8}  # neutral waters (Ewald needs a neutral cell)
OFFSETS = {1: 0.45, 8: -0.75}  # the predicted charges' start, not neutral per water: the excess must move
D3 = {"atomic_numbers": [1, 8], "functional": "pbe", "cutoff": 7.0, "cutoff_cn": 7.0}


def structures(total_charge: float) -> list[Atoms]:
    """A periodic water box (stress) and a charged water cluster without a cell, in one batch."""
    box = water_box(2, 31)
    c = water_box(2, 32, spacing=3.3)
    cluster = Atoms(c.numbers, positions=c.positions)
    cluster.info["charge"] = total_charge
    return [box, cluster]


def charged_potential() -> torch.nn.Module:
    pot = make_potential(seed=7, charge_head=True)
    with torch.no_grad():  # environment-dependent charges of a few 0.01 e (the random head's are tiny)
        pot.network.charge_readout.node.net[-1].weight.mul_(300.0)
        pot.charge_offsets.copy_(torch.tensor([OFFSETS[1], OFFSETS[8]], dtype=torch.float64))
    return pot


def trainer_side(pot: torch.nn.Module, charge_term, fixed_terms: list, atoms: list[Atoms]) -> list[dict]:
    """Per structure: the trainer's prediction on one batch of all of them, plus the long-range labels of the
    fixed terms (what training subtracted from the reference energies, forces and stress)."""
    ss = [structure_from_atoms(a) for a in atoms]
    b = collate(ss, GraphCache(ss, pot.r_cut).edges, z_to_species_table([1, 8]), torch.float64)
    pred = {k: v.detach().numpy() for k, v in predict_batch(pot, b, True, False, charge_term).items()}
    out, start = [], 0
    for k, s in enumerate(ss):
        sl = slice(start, start + s.n_atoms)
        start += s.n_atoms
        e, f, st = long_range_labels(fixed_terms, s) if fixed_terms else (0.0, 0.0, 0.0)
        res = {"energy": pred["energy"][k] + e, "forces": pred["forces"][sl] + f}
        if s.pbc.all():
            res["stress"] = pred["stress"][k] + st
        if "charges" in pred:
            res["charges"] = pred["charges"][sl]
        out.append(res)
    return out


def served(path, atoms: list[Atoms]) -> list[dict]:
    module, _ = load_model(path)
    out = []
    for a in atoms:
        args = [torch.tensor(a.positions), torch.tensor(a.cell.array), torch.tensor(a.numbers), torch.tensor(a.pbc)]
        res = module.compute(*args, True, float(a.info.get("charge", 0.0)))
        out.append({k: v.numpy() for k, v in res.items()})
    return out


def compare(train: list[dict], serve: list[dict]) -> None:
    for t, s in zip(train, serve):
        assert abs(float(s["energy"]) - float(t["energy"])) < 1e-11 * abs(float(t["energy"]))
        np.testing.assert_allclose(s["forces"], t["forces"], rtol=0, atol=1e-10)
        if "stress" in t:
            np.testing.assert_allclose(s["stress"], t["stress"], rtol=0, atol=1e-11)


def test_fixed_charges_and_d3_trainer_equals_packaged(tmp_path):
    pot = make_potential(seed=6)
    terms = [CoulombTerm(FIXED, accuracy=1e-6), DispersionTerm(**D3)]
    package(pot, tmp_path / "m.pt", long_range=terms)
    atoms = structures(0.0)
    train = trainer_side(pot, None, terms, atoms)
    serve = served(tmp_path / "m.pt", atoms)
    compare(train, serve)
    for a, s in zip(atoms, serve):  # the fixed charges are served too
        np.testing.assert_array_equal(s["charges"], [FIXED[int(z)] for z in a.numbers])
    # the long-range terms matter at this tolerance: without them the energies differ by eV
    bare = trainer_side(pot, None, [], atoms)
    assert abs(float(serve[0]["energy"]) - float(bare[0]["energy"])) > 0.1


def test_predicted_charges_and_d3_trainer_equals_packaged(tmp_path):
    pot = charged_potential()
    package(pot, tmp_path / "m.pt", long_range=[PredictedCoulombTerm(OFFSETS, accuracy=1e-6), DispersionTerm(**D3)])
    atoms = structures(1.0)
    charge_term = PredictedCoulombTerm(OFFSETS, accuracy=1e-6).double()
    train = trainer_side(pot, charge_term, [DispersionTerm(**D3).double()], atoms)
    serve = served(tmp_path / "m.pt", atoms)
    compare(train, serve)
    for a, t, s in zip(atoms, train, serve):
        np.testing.assert_allclose(s["charges"], t["charges"], rtol=0, atol=1e-13)
        assert abs(s["charges"].sum() - a.info.get("charge", 0.0)) < 1e-12
        assert np.ptp(s["charges"][a.numbers == 1]) > 1e-3  # charges depend on the environment


def test_the_packaged_model_is_the_assembly_and_keeps_its_weight_names(tmp_path):
    """PackagedModel subclasses the assembly; a file packaged before the assembly existed (the bundled hybrid
    model: fixed charges + D3) compiles again with its weights under the same names (repackage checks every
    key) and gives the same numbers, and its fixed charges again."""
    assert issubclass(PackagedModel, EnergyAssembly)
    src = REPO / "inputs" / "water" / "water_model_hybrid.pt"
    repackage(src, tmp_path / "again.pt")
    (old, card), (new, _) = load_model(src), load_model(tmp_path / "again.pt")
    assert card.charges_mode == "fixed" and card.long_range.dispersion is not None
    dtype = getattr(torch, card.dtype)
    a = water_box(2, 33)
    args = [torch.tensor(a.positions, dtype=dtype), torch.tensor(a.cell.array, dtype=dtype),
            torch.tensor(a.numbers), torch.tensor(a.pbc)]
    r0, r1 = old.compute(*args, True), new.compute(*args, True)
    for key in ("energy", "forces", "stress", "atomic_energies"):
        torch.testing.assert_close(r1[key], r0[key], rtol=1e-6, atol=1e-5)
    # the fixed charges, which an earlier repackage of this file lost (its charges() refuses), are back
    charges = {int(z): q for z, q in card.long_range.electrostatics.charges.items()}
    expected = torch.tensor([charges[int(z)] for z in a.numbers], dtype=dtype)
    torch.testing.assert_close(new.charges(*args), expected, rtol=0, atol=0)
    torch.testing.assert_close(r1["charges"], expected, rtol=0, atol=0)
    a.calc = MLMDCalculator(tmp_path / "again.pt")  # the ASE calculator asks for them (Ewald accuracy check)
    assert abs(a.get_potential_energy() - float(r1["energy"])) < 1e-6 * abs(float(r1["energy"]))


def test_batches_refuse_fixed_terms():
    """Training subtracts fixed long-range terms from the labels; a batch through them would be a second,
    structure-mixing evaluation, so the batch path says so instead."""
    ss = [structure_from_atoms(a) for a in structures(0.0)]
    pot = make_potential(seed=6)
    b = collate(ss, GraphCache(ss, pot.r_cut).edges, z_to_species_table([1, 8]), torch.float64)
    with pytest.raises(ValueError, match="one structure at a time"):
        EnergyAssembly(pot, [DispersionTerm(**D3).double()]).batch_properties(b, True, False, False)
