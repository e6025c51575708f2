"""A Verlet list for the long-range terms' real-space pairs: built with a skin, reused while no atom has moved far.

The pair lists of Ewald/PME's real-space sum and of D3 (7-8 Å at water density: 70-110 pairs per atom) cost as
much to build with vesin as the terms' own arithmetic. Between MD steps atoms move ~0.01 Å, so the list is built
at ``cutoff + skin`` and, on later calls, only filtered by distance; it is rebuilt when any atom has moved more
than skin / 2 since the build (then no pair can have come from beyond cutoff + skin into the cutoff: both atoms
would have to move towards each other by more than the skin together), or when the number of atoms, the cell
or the periodicity changed (any change: an NPT step rebuilds). The pairs returned are exactly those within
``cutoff`` (a half list with periodic shifts, as vesin's ``"ijS"``), in the order of the last build.

The cache is state carried between calls (TorchScript attributes, not buffers): ``clear()`` empties it, and a
fresh one is built at the first call after loading a packaged model. ``skin = 0`` builds every call.
"""

from typing import Tuple

import torch
from torch import nn
from vesin_torch import NeighborList

DEFAULT_NL_SKIN = 1.0  # Å: rebuilt when an atom has moved 0.5 Å (every ~50 steps of water at 300 K, 0.5 fs)


class VerletPairs(nn.Module):
    """forward(positions [N,3], cell [3,3], pbc [3]) -> (i, j, shifts) of the pairs within ``cutoff`` (half list)."""

    def __init__(self, cutoff: float, skin: float) -> None:
        super().__init__()
        if cutoff <= 0.0 or skin < 0.0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got {cutoff} and {skin}")
        self.cutoff: float = float(cutoff)
        self.skin: float = float(skin)
        self.nl = NeighborList(cutoff=self.cutoff + self.skin, full_list=False)
        self.ref_positions = torch.zeros(0, 3, dtype=torch.float64)
        self.ref_cell = torch.zeros(3, 3, dtype=torch.float64)
        self.ref_pbc = torch.zeros(3, dtype=torch.bool)
        self.i = torch.zeros(0, dtype=torch.long)
        self.j = torch.zeros(0, dtype=torch.long)
        self.shifts = torch.zeros(0, 3, dtype=torch.long)
        self.builds: int = 0  # how many times vesin ran (tests and benchmarks read it)

    @torch.jit.export
    def clear(self) -> None:
        self.ref_positions = torch.zeros(0, 3, dtype=torch.float64)
        self.i = torch.zeros(0, dtype=torch.long)
        self.j = torch.zeros(0, dtype=torch.long)
        self.shifts = torch.zeros(0, 3, dtype=torch.long)

    def _stale(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> bool:
        if self.skin == 0.0 or positions.shape[0] != self.ref_positions.shape[0]:
            return True
        if self.ref_positions.device != positions.device:
            return True
        if not bool(torch.equal(self.ref_cell, cell)) or not bool(torch.equal(self.ref_pbc, pbc)):
            return True
        if positions.shape[0] == 0:
            return False
        moved = (positions - self.ref_positions).pow(2).sum(1).max()
        return float(moved) > 0.25 * self.skin * self.skin

    def forward(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = positions.detach().to(torch.float64)
        box = cell.detach().to(torch.float64)
        if self._stale(pos, box, pbc):
            ijs = self.nl.compute(positions.detach(), cell.detach(), pbc, "ijS", True)
            self.i = ijs[0].to(torch.long)
            self.j = ijs[1].to(torch.long)
            self.shifts = ijs[2].to(torch.long)
            self.ref_positions = pos.clone()
            self.ref_cell = box.clone()
            self.ref_pbc = pbc.clone()
            self.builds += 1
            if self.skin == 0.0:
                return self.i, self.j, self.shifts
        p = positions.detach()
        vec = p.index_select(0, self.j) - p.index_select(0, self.i) + self.shifts.to(p.dtype) @ cell.detach()
        keep = torch.nonzero((vec * vec).sum(1) < self.cutoff * self.cutoff).squeeze(1)
        return self.i.index_select(0, keep), self.j.index_select(0, keep), self.shifts.index_select(0, keep)
