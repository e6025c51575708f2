"""The TorchScript bridge TorchForce calls: nm/kJ at the boundary, atomic numbers, ML indices and pbc baked in
(``OpenMMBridge``; ``ShortRangeBridge`` without the model's electrostatics, for OpenMM's PME).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mlmd.engines.openmm.model import LoadedModel, OpenMMSetupError, _as_loaded, _torch_dtype
from mlmd.units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

_COULOMB_TERM = "CoulombTerm"  # class name of mlmd's in-model electrostatics term (mlmd.model.longrange)


class OpenMMBridge(nn.Module):
    """What TorchForce calls: ``forward(positions [N,3] nm, boxvectors [3,3] nm) -> energy (kJ/mol)``.

    ``positions`` are all the System's particles; ``indices`` (baked in) selects the ML atoms.
    """

    def __init__(
        self,
        model: torch.jit.ScriptModule,
        numbers: list[int],
        indices: Optional[list[int]],
        periodic: bool,
        r_cut: float,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("numbers", torch.tensor(numbers, dtype=torch.long))
        self.register_buffer("indices", torch.tensor(indices if indices is not None else [], dtype=torch.long))
        self.register_buffer("pbc", torch.tensor([periodic, periodic, periodic], dtype=torch.bool))
        self.use_subset: bool = indices is not None
        self.periodic: bool = periodic
        self.min_width: float = 2.0 * float(r_cut)
        self.dtype: torch.dtype = dtype
        self.length_scale: float = NM_TO_ANGSTROM
        self.energy_scale: float = EV_TO_KJ_PER_MOL

    def check_box(self, cell: torch.Tensor) -> None:
        """Smallest perpendicular width of the cell >= twice the cutoff (minimum image), else a clear error."""
        volume = torch.abs(torch.linalg.det(cell))
        a = cell[0]
        b = cell[1]
        c = cell[2]
        areas = torch.stack(
            [torch.linalg.norm(torch.linalg.cross(b, c)), torch.linalg.norm(torch.linalg.cross(c, a)),
             torch.linalg.norm(torch.linalg.cross(a, b))]
        )
        width = float(torch.min(volume / areas))
        if not width >= self.min_width:
            raise ValueError(
                "mlmd: periodic box too small for the model: its smallest width is " + str(width)
                + " Å, less than twice the cutoff (" + str(self.min_width) + " Å)"
            )

    def energy(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.model(positions, cell, self.numbers, self.pbc)

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        pos = positions
        if self.use_subset:
            pos = pos.index_select(0, self.indices)
        pos = (pos * self.length_scale).to(self.dtype)  # scale in OpenMM's precision, then cast
        if self.periodic:
            if boxvectors is None:
                raise ValueError("mlmd: periodic model bridge called without box vectors")
            cell = (boxvectors * self.length_scale).to(self.dtype)
            self.check_box(cell)
        else:
            cell = torch.zeros(3, 3, dtype=self.dtype, device=pos.device)
        return self.energy(pos, cell).to(torch.float64) * self.energy_scale


class ShortRangeBridge(OpenMMBridge):
    """The bridge without the model's electrostatics (OpenMM computes them): the short-range network through
    the model's local-graph entry (``local_energies``) on a neighbour list built here, plus the model's other
    long-range terms (D3), given as ``terms``. Each pair once, then its reverse (n_mirrored), so the model
    computes what depends on the distance alone once per pair, as its own forward does."""

    def __init__(
        self,
        model: torch.jit.ScriptModule,
        numbers: list[int],
        indices: Optional[list[int]],
        periodic: bool,
        r_cut: float,
        dtype: torch.dtype,
        terms: list[torch.jit.ScriptModule],
        full_list: bool = False,
    ) -> None:
        super().__init__(model, numbers, indices, periodic, r_cut, dtype)
        from vesin_torch import NeighborList

        self.terms = nn.ModuleList(terms)
        self.nl = NeighborList(cutoff=float(r_cut), full_list=full_list)

    def short_range(self, species: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        ijs = self.nl.compute(positions.detach(), cell.detach(), self.periodic, "ijS", True)
        i, j = ijs[0].to(torch.long), ijs[1].to(torch.long)
        edge_index = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
        half = positions[j] - positions[i] + ijs[2].to(positions.dtype) @ cell
        vectors = torch.cat([half, -half])
        return self.model.local_energies(species, edge_index, vectors, positions.shape[0], i.shape[0]).sum()

    def energy(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        energy = self.short_range(self.model.species_of(self.numbers), positions, cell)
        for term in self.terms:
            energy = energy + term(positions, cell, self.numbers, self.pbc).sum()
        return energy


class FullListShortRangeBridge(ShortRangeBridge):
    """For files whose local_energies takes no n_mirrored (packaged before it): every directed edge."""

    def short_range(self, species: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        ijs = self.nl.compute(positions.detach(), cell.detach(), self.periodic, "ijS", True)
        edge_index = torch.stack([ijs[0].to(torch.long), ijs[1].to(torch.long)])
        vectors = positions[edge_index[1]] - positions[edge_index[0]] + ijs[2].to(positions.dtype) @ cell
        return self.model.local_energies(species, edge_index, vectors, positions.shape[0]).sum()


def build_bridge(
    model: str | Path | LoadedModel,
    numbers: list[int],
    indices: Optional[list[int]],
    periodic: bool,
    precision: Optional[str] = None,
    short_range_only: bool = False,
) -> torch.jit.ScriptModule:
    """Load the packaged model and script the bridge around it (atomic numbers, ML indices, pbc baked in)."""
    loaded = _as_loaded(model)
    card = loaded.card
    module = loaded.module
    dtype = _torch_dtype(card, precision)
    if dtype != getattr(torch, card.dtype):
        module = LoadedModel.read(loaded.path).module.to(dtype)  # a fresh copy: .to() converts in place
    if not short_range_only:
        return torch.jit.script(OpenMMBridge(module, numbers, indices, periodic, card.r_cut, dtype).eval())
    terms = list(module.long_range.children())
    if hasattr(module, "dispersion"):  # D3 with its graph entry sits apart (mlmd.deploy.packaged)
        terms += list(module.dispersion.children())
    names = [getattr(t, "original_name", "") for t in terms]
    if not card.has_local_graph or names.count(_COULOMB_TERM) != 1:
        raise OpenMMSetupError(
            f"{loaded.path} computes its electrostatics inside the model file, and OpenMM cannot take them over: "
            f"it needs the local_energies entry and one {_COULOMB_TERM} among the long-range terms (found "
            f"{names}); use electrostatics='model'"
        )
    others = [t for t, n in zip(terms, names) if n != _COULOMB_TERM]
    # local_energies(self, species, edge_index, edge_vectors, n_local[, n_mirrored]): read as the plugin reads it
    if len(module.local_energies.schema.arguments) >= 6:
        bridge = ShortRangeBridge(module, numbers, indices, periodic, card.r_cut, dtype, others)
    else:
        bridge = FullListShortRangeBridge(module, numbers, indices, periodic, card.r_cut, dtype, others, True)
    return torch.jit.script(bridge.eval())
