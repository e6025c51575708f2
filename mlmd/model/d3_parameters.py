"""D3 data and parameters: the reference tables (C6 per reference pair, reference CNs, radii; d3_data/), the
damping parameters of each functional, the standard and the production cutoffs. Numbers only; the D3 term
itself is mlmd.model.dispersion."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlmd.units import BOHR_TO_ANGSTROM

DATA_FILE = Path(__file__).with_name("d3_data") / "d3_reference.npz"
MAX_Z = 103
CUTOFF_DISP2_BOHR = 60.0
CUTOFF_DISP3_BOHR = 40.0
CUTOFF_CN_BOHR = 40.0
K_CN = 16.0  # steepness of the coordination-number counting function
WEIGHT_FACTOR = 4.0  # Gaussian CN weighting of the references
RS9 = 4.0 / 3.0  # scaling of the vdW radii in the ATM damping
ALP = 14.0  # zero-damping exponent; ATM uses alp + 2

# D3(BJ) parameters (s6 = 1 unless given; a2 in bohr), from simple-dftd3's parameters.toml
D3BJ_PARAMETERS: dict[str, dict[str, float]] = {
    "pbe": {"a1": 0.4289, "s8": 0.7875, "a2": 4.4407},
    "pbe0": {"a1": 0.4145, "s8": 1.2177, "a2": 4.8593},
    "revpbe": {"a1": 0.5238, "s8": 2.3550, "a2": 3.5016},
    "revpbe0": {"a1": 0.4679, "s8": 1.7588, "a2": 3.7619},
    "pbesol": {"a1": 0.4466, "s8": 2.9491, "a2": 6.1742},
    "b3lyp": {"a1": 0.3981, "s8": 1.9889, "a2": 4.4211},
    "blyp": {"a1": 0.4298, "s8": 2.6996, "a2": 4.2359},
    "bp": {"a1": 0.3946, "s8": 3.2822, "a2": 4.8516},
    "tpss": {"a1": 0.4535, "s8": 1.9435, "a2": 4.4752},
    "tpssh": {"a1": 0.4529, "s8": 2.2382, "a2": 4.6550},
    "scan": {"a1": 0.5380, "s8": 0.0, "a2": 5.4200},
    "r2scan": {"a1": 0.49484001, "s8": 0.78981345, "a2": 5.73083694},
    "b97d": {"a1": 0.5545, "s8": 2.2609, "a2": 3.2297},
    "pw6b95": {"a1": 0.2076, "s8": 0.7257, "a2": 6.3750},
    "hse06": {"a1": 0.383, "s8": 2.310, "a2": 5.685},
    "b2plyp": {"a1": 0.3065, "s8": 0.9147, "a2": 5.0570, "s6": 0.64},
}
# not a D3 set: GFN2-xTB's own (D4) damping parameters, for GFN2-xTB reference data (see module docstring)
GFN2_PARAMETERS: dict[str, float] = {"a1": 0.52, "s8": 2.7, "a2": 5.0, "s6": 1.0, "s9": 5.0}


def damping_parameters(functional: str) -> dict[str, float]:
    """s6, s8, a1, a2 and the ATM s9 (used when the three-body term is on) of a functional."""
    key = functional.lower().replace("-", "").replace("_", "")
    if key in ("gfn2", "gfn2xtb"):
        return dict(GFN2_PARAMETERS)
    if key == "bp86":
        key = "bp"
    if key not in D3BJ_PARAMETERS:
        known = ", ".join(sorted(D3BJ_PARAMETERS) + ["gfn2"])
        raise ValueError(f"no D3(BJ) parameters for functional {functional!r}; known: {known}")
    p = {"s6": 1.0, "s9": 1.0}
    p.update(D3BJ_PARAMETERS[key])
    return p


_REFERENCE_CACHE: dict[str, np.ndarray] = {}


def load_reference() -> dict[str, np.ndarray]:
    """The D3 reference data (atomic units), indexed by atomic number (see d3_data/extract.py)."""
    if not _REFERENCE_CACHE:
        with np.load(DATA_FILE) as data:
            _REFERENCE_CACHE.update({k: data[k] for k in data.files})
    return _REFERENCE_CACHE


def element_tables(atomic_numbers: list[int]) -> dict[str, torch.Tensor]:
    """Per-species tables for the chosen elements, unpacked from the reference file."""
    ref = load_reference()
    n_ref = ref["n_ref"]
    zs = list(atomic_numbers)
    n_species = len(zs)
    r_max = int(max(n_ref[z] for z in zs))
    # offsets of the packed C6 blocks (zi >= zj)
    offsets = {}
    pos = 0
    for zi in range(1, MAX_Z + 1):
        for zj in range(1, zi + 1):
            offsets[(zi, zj)] = pos
            pos += int(n_ref[zi] * n_ref[zj])
    c6 = np.zeros((n_species, n_species, r_max, r_max))
    for a, zi in enumerate(zs):
        for b, zj in enumerate(zs):
            hi, lo = (zi, zj) if zi >= zj else (zj, zi)
            block = ref["c6_packed"][offsets[(hi, lo)] : offsets[(hi, lo)] + n_ref[hi] * n_ref[lo]]
            block = block.reshape(n_ref[hi], n_ref[lo])
            if zi < zj:
                block = block.T
            c6[a, b, : n_ref[zi], : n_ref[zj]] = block
    ref_cn = np.zeros((n_species, r_max))
    valid = np.zeros((n_species, r_max), dtype=bool)
    for a, z in enumerate(zs):
        ref_cn[a, : n_ref[z]] = ref["ref_cn"][z, : n_ref[z]]
        valid[a, : n_ref[z]] = True
    rvdw_full = np.zeros((MAX_Z + 1, MAX_Z + 1))
    rvdw_full[np.tril_indices(MAX_Z + 1)] = ref["rvdw_packed"]
    rvdw_full = rvdw_full + np.tril(rvdw_full, -1).T
    # The D3 pairwise vdW radii are tabulated in Å to 4 decimals; the extracted table holds them in bohr rounded
    # to float32 (up to 1 ulp off, 1e-7 relative), which moves E_ATM of Cu by 2e-8 eV/atom against
    # simple-dftd3. Restore the tabulated values exactly (the float32 error, < 6e-7 Å, is far below 5e-5 Å).
    rvdw_full = np.round(rvdw_full * BOHR_TO_ANGSTROM, 4) / BOHR_TO_ANGSTROM
    idx = np.array(zs)
    return {
        "ref_c6": torch.tensor(c6),
        "ref_cn": torch.tensor(ref_cn),
        "ref_valid": torch.tensor(valid),
        "rcov": torch.tensor(ref["rcov"][idx]),
        "r4r2": torch.tensor(ref["r4r2"][idx]),
        "rvdw": torch.tensor(rvdw_full[np.ix_(idx, idx)]),
    }


# Short, smooth cutoffs for large 3D-periodic production runs (benchmarks/d3_cutoffs.py; RESULTS.md "D3 cutoffs"):
# 3,072 water atoms, against the standard cutoffs: energy -0.03 meV/atom, forces 0.26 meV/Å RMS (1.2 max),
# stress 0.9 MPa; ~18% of the short-range model's step on one core (the standard cutoffs: ~17x that step).
PRODUCTION_SETTINGS: dict[str, Any] = {"cutoff": 7.0, "cutoff_cn": 7.0, "smooth_width": 2.0, "tail_correction": True}


def d3_cutoffs_angstrom() -> dict[str, float]:
    """The standard (simple-dftd3 default) cutoffs in Å."""
    return {
        "cutoff": CUTOFF_DISP2_BOHR * BOHR_TO_ANGSTROM,
        "cutoff_three_body": CUTOFF_DISP3_BOHR * BOHR_TO_ANGSTROM,
        "cutoff_cn": CUTOFF_CN_BOHR * BOHR_TO_ANGSTROM,
    }
