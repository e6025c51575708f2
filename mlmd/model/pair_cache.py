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
        self.cartesian = torch.zeros(0, 3, dtype=torch.float64)  # shifts @ cell of the build (the cell is fixed)
        # near(): the pairs within cutoff + skin / 2 at the last refinement, and the positions then
        self.near_ref = torch.zeros(0, 3, dtype=torch.float64)
        self.near_i = torch.zeros(0, dtype=torch.long)
        self.near_j = torch.zeros(0, dtype=torch.long)
        self.near_shifts = torch.zeros(0, 3, dtype=torch.float64)
        self.near_cartesian = torch.zeros(0, 3, dtype=torch.float64)
        self.builds: int = 0  # how many times vesin ran (tests and benchmarks read it)

    @torch.jit.export
    def clear(self) -> None:
        self.ref_positions = torch.zeros(0, 3, dtype=torch.float64)
        self.i = torch.zeros(0, dtype=torch.long)
        self.j = torch.zeros(0, dtype=torch.long)
        self.shifts = torch.zeros(0, 3, dtype=torch.long)
        self.cartesian = torch.zeros(0, 3, dtype=torch.float64)
        self.near_ref = torch.zeros(0, 3, dtype=torch.float64)

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

    def _update(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> bool:
        """Rebuild the list if stale; True when it was rebuilt. Keeps the shifts in Cartesian form for the filter."""
        pos = positions.detach().to(torch.float64)
        box = cell.detach().to(torch.float64)
        if self._stale(pos, box, pbc):
            ijs = self.nl.compute(positions.detach(), cell.detach(), pbc, "ijS", True)
            self.i = ijs[0].to(torch.long)
            self.j = ijs[1].to(torch.long)
            self.shifts = ijs[2].to(torch.long)
            self.cartesian = self.shifts.to(positions.dtype) @ cell.detach()
            self.ref_positions = pos.clone()
            self.ref_cell = box.clone()
            self.ref_pbc = pbc.clone()
            self.builds += 1
            return True
        if self.cartesian.dtype != positions.dtype:
            self.cartesian = self.shifts.to(positions.dtype) @ cell.detach()
        return False

    def forward(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._update(positions, cell, pbc) and self.skin == 0.0:
            return self.i, self.j, self.shifts
        _, _, keep = self._vectors(positions, self.cutoff)
        return self.i.index_select(0, keep), self.j.index_select(0, keep), self.shifts.index_select(0, keep)

    def _vectors(self, positions: torch.Tensor, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(vectors, squared lengths, indices of those within ``cutoff``) of the listed pairs, without autograd."""
        p = positions.detach()
        vec = p.index_select(0, self.j) - p.index_select(0, self.i) + self.cartesian
        # r^2 as a matrix-vector product: a reduction over a last dimension of 3 is several times slower on CPU
        r2 = torch.mv(vec * vec, torch.ones(3, dtype=p.dtype, device=p.device))
        keep = torch.nonzero(r2 < cutoff * cutoff).squeeze(1)
        return vec, r2, keep

    @torch.jit.export
    def near(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(i, j, shifts as floats, vectors x_j - x_i + shift @ cell, their squared lengths), without autograd, of
        every pair within the cutoff and some beyond it (up to cutoff + skin): for terms whose pair functions
        vanish at the cutoff (a smooth cutoff), so that no call pays for selecting the exact pairs.

        A second level of the list: the pairs within cutoff + skin / 2, selected again when an atom has moved more
        than skin / 4 since the last selection (then none from beyond it can be within the cutoff), and whenever
        the list itself is rebuilt. ``skin = 0``: vesin's pairs, built every call."""
        rebuilt = self._update(positions, cell, pbc)
        if self.skin == 0.0:
            vec, r2, _ = self._vectors(positions, self.cutoff)
            return self.i, self.j, self.shifts.to(positions.dtype), vec, r2
        pos = positions.detach().to(torch.float64)
        moved = 0.0
        if not rebuilt and pos.shape[0] == self.near_ref.shape[0] and pos.shape[0] > 0:
            moved = float((pos - self.near_ref).pow(2).sum(1).max())
        if (rebuilt or pos.shape[0] != self.near_ref.shape[0] or moved > 0.0625 * self.skin * self.skin
                or self.near_cartesian.dtype != positions.dtype):
            vec, r2, keep = self._vectors(positions, self.cutoff + 0.5 * self.skin)
            self.near_i, self.near_j = self.i.index_select(0, keep), self.j.index_select(0, keep)
            self.near_shifts = self.shifts.index_select(0, keep).to(positions.dtype)
            self.near_cartesian = self.cartesian.index_select(0, keep)
            self.near_ref = pos.clone()
            return self.near_i, self.near_j, self.near_shifts, vec.index_select(0, keep), r2.index_select(0, keep)
        p = positions.detach()
        vec = p.index_select(0, self.near_j) - p.index_select(0, self.near_i) + self.near_cartesian
        r2 = torch.mv(vec * vec, torch.ones(3, dtype=p.dtype, device=p.device))
        return self.near_i, self.near_j, self.near_shifts, vec, r2

    @torch.jit.export
    def within(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(i, j, shifts as floats, vectors x_j - x_i + shift @ cell, their squared lengths) of the pairs within the
        cutoff, without autograd: what a term that differentiates by hand needs, from the filter's own arithmetic."""
        self._update(positions, cell, pbc)
        vec, r2, keep = self._vectors(positions, self.cutoff)
        if self.skin == 0.0:  # vesin's pairs, none to drop
            return self.i, self.j, self.shifts.to(positions.dtype), vec, r2
        shifts = self.shifts.index_select(0, keep).to(positions.dtype)
        return self.i.index_select(0, keep), self.j.index_select(0, keep), shifts, vec.index_select(0, keep), \
            r2.index_select(0, keep)
