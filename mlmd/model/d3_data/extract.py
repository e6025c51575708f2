"""Regenerate ``d3_reference.npz`` (the DFT-D3 reference data) from tad-dftd3 (a test extra).

The D3 reference tables are data (Grimme et al., J. Chem. Phys. 132, 154104 (2010)); mlmd's code that uses
them is its own (mlmd/model/dispersion.py). Run once: ``python -m mlmd.model.d3_data.extract``.

Stored (atomic units, index = atomic number, 0 is a dummy, Z = 1..103 covered):
- ``n_ref`` [104] int: number of reference systems per element;
- ``ref_cn`` [104, 7]: reference coordination numbers (-1 where absent);
- ``c6_packed``: reference C6 (Hartree Bohr^6), blocks c6[zi, zj, :n_ref[zi], :n_ref[zj]] for zi >= zj >= 1,
  concatenated in that order (c6[zj, zi] is the transposed block);
- ``rcov`` [104]: D3 covalent radii (Bohr, already scaled by 4/3) for the coordination number;
- ``r4r2`` [104]: sqrt(0.5 * <r^4>/<r^2> * sqrt(Z)), so that C8 = 3 C6 r4r2_i r4r2_j;
- ``rvdw_packed``: pairwise van der Waals radii (Bohr) for the ATM damping, lower triangle (zi >= zj).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def extract(path: Path) -> None:
    import torch
    from tad_dftd3 import data
    from tad_dftd3.reference import Reference
    from tad_mctc.data import radii

    dd = {"dtype": torch.float64}
    ref = Reference(**dd)
    ref_cn = ref.cn.numpy()
    c6 = ref.c6.numpy()
    n_ref = (ref_cn >= 0).sum(1).astype(np.int64)
    n_ref[0] = 0
    blocks = []
    for zi in range(1, 104):
        for zj in range(1, zi + 1):
            blocks.append(c6[zi, zj, : n_ref[zi], : n_ref[zj]].ravel())
    rvdw = radii.VDW_PAIRWISE(**dd).numpy()
    tri = np.tril_indices(104)
    np.savez_compressed(
        path,
        n_ref=n_ref,
        ref_cn=ref_cn,
        c6_packed=np.concatenate(blocks),
        rcov=radii.COV_D3(**dd).numpy()[:104],
        r4r2=data.R4R2(**dd).numpy()[:104],
        rvdw_packed=rvdw[tri],
    )


if __name__ == "__main__":
    extract(Path(__file__).with_name("d3_reference.npz"))
