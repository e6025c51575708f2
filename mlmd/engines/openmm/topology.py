"""ASE ``Atoms`` -> OpenMM Topology and positions (water molecules as HOH residues with bonds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from openmm import app, unit

from mlmd.engines.openmm.model import OpenMMSetupError
from mlmd.units import ANGSTROM_TO_NM


def topology_from_atoms(atoms: Any) -> tuple[app.Topology, unit.Quantity]:
    """OpenMM Topology and positions (nm) for an ASE ``Atoms``, atom order kept.

    Whole water molecules listed as O H H (O–H under 1.3 Å, minimum image) become HOH residues with bonds
    (names O, H1, H2, as in OpenMM's water templates); otherwise each atom is its own residue. OpenMM has no
    partial periodicity: pbc must be all True (box vectors set from the cell) or all False.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        raise OpenMMSetupError(f"OpenMM needs periodicity in all three directions or none (pbc={pbc.tolist()})")
    top = app.Topology()
    chain = top.addChain()
    if _is_water(atoms):
        for _ in range(len(atoms) // 3):
            res = top.addResidue("HOH", chain)
            o = top.addAtom("O", app.element.oxygen, res)
            top.addBond(o, top.addAtom("H1", app.element.hydrogen, res))
            top.addBond(o, top.addAtom("H2", app.element.hydrogen, res))
    else:
        for s in atoms.get_chemical_symbols():
            top.addAtom(s, app.Element.getBySymbol(s), top.addResidue(s.upper(), chain))
    if pbc.all():
        top.setPeriodicBoxVectors(np.asarray(atoms.cell.array) * ANGSTROM_TO_NM * unit.nanometer)
    return top, np.asarray(atoms.positions) * ANGSTROM_TO_NM * unit.nanometer


def _is_water(atoms: Any) -> bool:
    symbols = atoms.get_chemical_symbols()
    if not symbols or len(symbols) % 3 or symbols != ["O", "H", "H"] * (len(symbols) // 3):
        return False
    mic = bool(np.asarray(atoms.pbc).all())
    return all(
        float(atoms.get_distances(k, [k + 1, k + 2], mic=mic).max()) < 1.3 for k in range(0, len(symbols), 3)
    )
