"""Long-range terms of a packaged file built again with this mlmd's code (for ``repackage``).

A compiled term carries the code of the mlmd that packaged it. The fixed-charge Coulomb term is rebuilt from the
model card's charges and Ewald/PME parameters when that gives the same term (every buffer of the compiled one
equal, the same energy and forces on a periodic water box), so that a repackaged file gets the faster PME and
the Verlet list of the real-space pairs; or with other parameters the caller chose (``electrostatics``: a
``choose_parameters`` dict at the same accuracy, e.g. a cutoff-limited splitting with B-spline PME), checked
against the compiled term within the accuracy the card promises.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from mlmd.deploy.checksum import same_tensor
from mlmd.units import COULOMB_EV_A

# keys of an electrostatics card that are not Ewald/PME parameters
_CARD_ONLY = ("mode", "charges")


def _water_cell(card: Any):
    """A periodic box of the model's own elements (water when it has H and O) with more atoms than the Ewald/PME
    switch (500), so that PME is what gets compared."""
    from ase import Atoms

    from mlmd.data.generate import water_lattice

    if sorted(z for z in card.atomic_numbers if z in (1, 8)) == [1, 8]:
        return water_lattice(216, 18.6, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    zs = [card.atomic_numbers[k % len(card.atomic_numbers)] for k in range(600)]
    return Atoms(zs, positions=rng.uniform(0, 19.0, (600, 3)), cell=[19.0] * 3, pbc=True)


def _energy_forces(term: Any, atoms: Any, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    pos = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    e = term(pos, torch.tensor(atoms.cell.array, dtype=dtype), torch.tensor(atoms.numbers),
             torch.tensor(atoms.pbc)).sum()
    return float(e.detach()), torch.autograd.grad(e, pos)[0]


def rebuilt_coulomb(
    compiled: torch.jit.ScriptModule, card: Any, electrostatics: Optional[Mapping[str, Any]] = None
) -> Optional[torch.nn.Module]:
    """CoulombTerm from the card (or with ``electrostatics`` parameters) if it is the compiled term (else None).

    Without ``electrostatics``: every buffer the compiled term has must be equal in the rebuilt one and energy
    and forces agree to rounding. With it: energy per atom and RMS force within the card's promised accuracy.
    """
    from mlmd.model.longrange import CoulombTerm

    ec = card.long_range.electrostatics
    if ec is None or ec.mode != "fixed":
        return None
    old = compiled.state_dict()
    dtype = old["coulomb._dtype_probe"].dtype if "coulomb._dtype_probe" in old else torch.float64
    params = {k: v for k, v in (electrostatics or ec.to_json()).items() if k not in _CARD_ONLY}
    try:
        term = CoulombTerm({int(z): float(q) for z, q in ec.charges.items()}, params=params).to(dtype)
    except (KeyError, ValueError):
        return None
    new = term.state_dict()
    if electrostatics is None and any(k not in new or not same_tensor(new[k], v) for k, v in old.items()):
        return None
    atoms = _water_cell(card)
    e_old, f_old = _energy_forces(compiled, atoms, dtype)
    e_new, f_new = _energy_forces(term, atoms, dtype)
    if electrostatics is None:
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        scale = float(f_old.abs().max()) + 1e-30
        same = abs(e_old - e_new) <= tol * abs(e_old) and float((f_old - f_new).abs().max()) <= tol * scale
    else:  # another splitting of the same sum: each within the promised accuracy of it, so within twice of each other
        target = 2.0 * float(ec.accuracy) * COULOMB_EV_A
        rms = float((f_old - f_new).pow(2).sum(1).mean().sqrt())
        same = rms <= target and abs(e_old - e_new) / len(atoms) <= target
    return term if same else None
