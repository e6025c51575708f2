"""simple-dftd3 (the dftd3 package's Python interface) as the independent D3 reference of the tests."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from dftd3 import interface as dftd3_interface

from mlmd.units import BOHR_TO_ANGSTROM, HARTREE_TO_EV


def reference(atoms: Atoms, param: dict, cutoffs: dict | None = None):
    """simple-dftd3: energy (eV), forces (eV/Å), stress (eV/Å^3, ASE sign) or None."""
    pbc = np.asarray(atoms.pbc)
    periodic = bool(pbc.any())
    model = dftd3_interface.DispersionModel(
        atoms.numbers,
        atoms.positions / BOHR_TO_ANGSTROM,
        np.asarray(atoms.cell.array) / BOHR_TO_ANGSTROM if periodic else None,
        pbc if periodic else None,
    )
    if cutoffs is not None:
        model.set_realspace_cutoff(
            cutoffs["cutoff"] / BOHR_TO_ANGSTROM,
            cutoffs["cutoff_three_body"] / BOHR_TO_ANGSTROM,
            cutoffs["cutoff_cn"] / BOHR_TO_ANGSTROM,
        )
    res = model.get_dispersion(dftd3_interface.RationalDampingParam(**param), grad=True)
    energy = float(res["energy"]) * HARTREE_TO_EV
    forces = -res["gradient"] * HARTREE_TO_EV / BOHR_TO_ANGSTROM
    stress = res["virial"] * HARTREE_TO_EV / atoms.get_volume() if periodic else None
    return energy, forces, stress
