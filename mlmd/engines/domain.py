"""Out-of-domain signal for MD in ASE and OpenMM: a configuration compared with the training domain that the
model card records (mlmd.deploy.domain), the same rules as ``pair_style mlmd ... domain`` in LAMMPS.

A configuration is out of the domain when two atoms are closer than the card's ``close_factor`` times the
shortest distance of their element pair in the training data, or when a fully periodic cell's volume per atom
is outside the card's volume_factors times the training range. ``mode``:
- ``"warn"`` (default): one :class:`DomainWarning` per run, naming the step and the atoms (0-based indices),
  after which nothing more is checked (a run that has left the domain is not watched twice);
- ``"stop"``: :class:`OutOfDomainError` (an :class:`mlmd.engines.checks.MDError`) instead;
- ``"off"``: nothing is checked.
A model file without the record (packaged before it, or without its training data) gives no signal.

Cost: one neighbour search (vesin) out to the largest pair limit (below the cutoff, ~2 Å for water) per check.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from mlmd.deploy.card import ModelCard
from mlmd.deploy.domain import pair_key
from mlmd.engines.checks import MDError, atom_list

DOMAIN_MODES = ("warn", "stop", "off")


# Å: vesin refuses cutoffs of ~1e-6 Å and below; no limit this small could be met by a real pair anyway
MIN_SEARCH_RADIUS = 0.01


class DomainWarning(UserWarning):
    """An MD configuration left the model's training domain (the message names the step and the atoms)."""


class OutOfDomainError(MDError):
    """An MD run stopped (domain mode "stop") because its configuration left the model's training domain."""


def check_domain_mode(mode: str) -> str:
    if mode not in DOMAIN_MODES:
        raise ValueError(f"domain mode {mode!r} is not one of {', '.join(DOMAIN_MODES)}")
    return mode


class DomainMonitor:
    """Compares configurations with a model card's training domain; see the module docstring.

    >>> monitor = DomainMonitor(card, "warn")
    >>> monitor.check(f"MD step {step}", atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    """

    def __init__(self, card: ModelCard, mode: str = "warn") -> None:
        self.mode = check_domain_mode(mode)
        self.domain = card.training_domain
        self.found: Optional[str] = None  # the first finding (its message), once there is one
        self.active = self.mode != "off" and self.domain is not None
        if self.domain is None:
            return
        elements = list(card.elements)
        n = len(elements)
        self.elements = elements
        self.limits = np.array([[self.domain.pair_limit(a, b, elements, card.r_cut) for b in elements]
                                for a in elements])
        recorded = self.domain.pair_min_distance
        self.seen = np.array([[recorded.get(pair_key(a, b, elements), np.nan) for b in elements] for a in elements])
        self.species_of = np.full(max(card.atomic_numbers) + 1, -1, dtype=np.int64)
        self.species_of[np.asarray(card.atomic_numbers)] = np.arange(n)
        # the search radius only has to reach the largest limit (pairs are then compared with their own);
        # a floor keeps it above vesin's smallest accepted cutoff when a card's limits are tiny
        self.cutoff = max(float(self.limits.max()), MIN_SEARCH_RADIUS)
        self.volume_limits = self.domain.volume_limits()
        from vesin_torch import NeighborList

        self.nl = NeighborList(cutoff=self.cutoff, full_list=False)

    def check(self, where: str, positions: np.ndarray, numbers: np.ndarray, cell: Optional[np.ndarray],
              pbc: np.ndarray, all_atoms: bool = True) -> Optional[str]:
        """Warn (or raise) for the first configuration out of the domain; the message, or None. where: the
        engine and step ("OpenMM MD step 120"), the start of the message. all_atoms False: the atoms are part of
        a larger system (ML/MM), so the volume per atom is not checked."""
        if not self.active or self.found is not None:
            return None
        problem = self.problem(positions, numbers, cell, pbc, all_atoms)
        if problem is None:
            return None
        self.found = f"{where}: the configuration left the model's training domain: {problem}"
        if self.mode == "stop":
            raise OutOfDomainError(self.found + " (stopped: domain mode 'stop')")
        warnings.warn(self.found + "; its energies and forces are extrapolations (warned once per run; domain "
                      "mode 'stop' stops instead)", DomainWarning, stacklevel=2)
        return self.found

    def problem(self, positions: np.ndarray, numbers: np.ndarray, cell: Optional[np.ndarray], pbc: np.ndarray,
                all_atoms: bool = True) -> Optional[str]:
        """What is out of the domain in this configuration, naming the atoms; None if nothing is."""
        pbc = np.asarray(pbc, dtype=bool)
        return self._closest_pair(positions, numbers, cell, pbc) or self._volume(numbers, cell, pbc, all_atoms)

    def _volume(self, numbers: np.ndarray, cell: Optional[np.ndarray], pbc: np.ndarray,
                all_atoms: bool) -> Optional[str]:
        n_atoms = len(numbers)
        if all_atoms and self.volume_limits is not None and cell is not None and pbc.all() and n_atoms:
            v = abs(float(np.linalg.det(cell))) / n_atoms
            lo, hi = self.volume_limits
            if not lo <= v <= hi:
                vmin, vmax = self.domain.volume_per_atom
                return (f"the cell's volume per atom is {v:.4g} Å^3, outside [{lo:.4g}, {hi:.4g}] (the training cells "
                        f"had {vmin:.4g} to {vmax:.4g} Å^3 per atom; limits {list(self.domain.volume_factors)} times "
                        "those)")
        return None

    def _closest_pair(self, positions: np.ndarray, numbers: np.ndarray, cell: Optional[np.ndarray],
                      pbc: np.ndarray) -> Optional[str]:
        if len(numbers) < 2:
            return None
        periodic = pbc.any() and cell is not None
        box = np.where(pbc[:, None], cell, 0.0) if periodic else np.zeros((3, 3))
        import torch  # here, not at module level: `mlmd md --engine lammps` reads DOMAIN_MODES without torch

        i, j, d = self.nl.compute(torch.as_tensor(np.asarray(positions, dtype=np.float64)),
                                  torch.as_tensor(box, dtype=torch.float64), torch.as_tensor(pbc), "ijd", False)
        if len(d) == 0:
            return None
        i, j, d = i.numpy(), j.numpy(), d.numpy()
        si, sj = self.species_of[numbers[i]], self.species_of[numbers[j]]
        ratio = d / self.limits[si, sj]
        bad = np.flatnonzero(ratio < 1.0)
        if len(bad) == 0:
            return None
        k = bad[np.argmin(ratio[bad])]
        a, b = sorted((int(i[k]), int(j[k])))
        ea, eb = self.elements[self.species_of[numbers[a]]], self.elements[self.species_of[numbers[b]]]
        sa, sb = self.species_of[numbers[a]], self.species_of[numbers[b]]
        seen = self.seen[sa, sb]
        why = (f"the shortest {ea}-{eb} distance in the training data, {seen:.3f} Å" if np.isfinite(seen) else
               f"the cutoff: the training data has no {ea}-{eb} pair within it")
        text = (f"atoms {a} ({ea}) and {b} ({eb}) are {d[k]:.3f} Å apart, closer than {self.limits[sa, sb]:.3f} Å "
                f"({self.domain.close_factor} x {why})")
        if len(bad) > 1:
            text += f"; {len(bad)} pairs in all, atoms {atom_list(np.concatenate([i[bad], j[bad]]))}"
        return text
