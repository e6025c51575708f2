"""The TorchScript bridge TorchForce calls: nm/kJ at the boundary, atomic numbers, ML indices and pbc baked in
(``OpenMMBridge``; ``ShortRangeBridge`` without the model's electrostatics, for OpenMM's PME).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from mlmd import ewald_params as ep
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


FIX_OPENMM = (
    "MLMDPotential(model, tune_electrostatics=True).createSystem(topology, positions=positions) (openmm-ml: "
    "MLPotential('mlmd', modelPath=..., tune_electrostatics=True)) re-chooses them for the structure"
)


class ChargeCheckBridge(OpenMMBridge):
    """The bridge of a model that sums Ewald/PME on charges it predicts, in a periodic System: at its first
    evaluation (OpenMM loads the module once per Context, so: once per Context), with the charges of those
    positions, the estimated force error of the model's parameters is compared with the target, and a warning names
    the estimate, the target and the fix. The warning goes through torch's warning handler: OpenMM calls the module
    from C++, so it is printed on stderr. Only a flag changes (openmm-torch freezes the module, which folds the
    Ewald parameters into constants: tuning them here would not reach the sum)."""

    def __init__(
        self,
        model: torch.jit.ScriptModule,
        numbers: list[int],
        indices: Optional[list[int]],
        r_cut: float,
        dtype: torch.dtype,
        params: dict[str, Any],
    ) -> None:
        super().__init__(model, numbers, indices, True, r_cut, dtype)
        self.pending: bool = True
        self.fix: str = FIX_OPENMM
        self.accuracy: float = float(params["accuracy"])
        self.coulomb_constant: float = float(params["coulomb_constant"])
        self.smearing: float = float(params["smearing"])
        self.real_cut: float = float(params["r_cut"])
        self.k_cutoff: float = float(params["k_cutoff"])
        self.grid_spacing: float = float(params["grid_spacing"])
        self.order: int = int(params["interpolation_order"])
        self.assignment: str = str(params.get("pme_assignment", "lagrange"))  # its error constant differs
        self.method: str = str(params["method"])
        self.ewald_max_atoms: int = int(params["ewald_max_atoms"])
        self.max_memory: float = float(params.get("max_memory", ep.DEFAULT_MAX_MEMORY))

    def check_accuracy(self, positions: torch.Tensor, cell: torch.Tensor) -> float:
        """The estimated force error (eV/Å) for these positions' charges, with the warning when above the target."""
        cell64 = cell.detach().to(torch.float64)
        q = self.model.charges(positions.detach(), cell.detach(), self.numbers, self.pbc).to(torch.float64)
        volume = abs(float(torch.linalg.det(cell64)))
        lengths: list[float] = []
        heights: list[float] = []
        for i in range(3):
            lengths.append(float(torch.linalg.norm(cell64[i])))
            area = torch.linalg.norm(torch.linalg.cross(cell64[(i + 1) % 3], cell64[(i + 2) % 3]))
            heights.append(volume / float(area))
        err = self.coulomb_constant * ep.structure_force_error(
            float((q * q).sum()), int(q.shape[0]), volume, lengths, heights, self.smearing, self.real_cut,
            self.k_cutoff, self.grid_spacing, self.order, self.method, self.ewald_max_atoms, self.max_memory,
            self.assignment,
        )
        target = self.accuracy * self.coulomb_constant
        if ep.exceeds(err, target):
            warnings.warn("mlmd: " + ep.inaccuracy_message(err, target, self.accuracy, self.fix), stacklevel=2)
        return err

    def energy(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        if self.pending:
            self.pending = False
            self.check_accuracy(positions, cell)
        return self.model(positions, cell, self.numbers, self.pbc)


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
    check_predicted: bool = True,
    tune_to: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.jit.ScriptModule:
    """Load the packaged model and script the bridge around it (atomic numbers, ML indices, pbc baked in).

    A periodic model that predicts its charges gets a ``ChargeCheckBridge`` (``check_predicted``: the accuracy
    checked at its first evaluation; fixed charges are checked when the System is built, mlmd.engines.openmm.system).
    ``tune_to`` (charges [N] e, cell [3, 3] Å): a fresh copy of the model with its Ewald/PME parameters tuned to that
    structure (``tune_for_structure``) is scripted, before openmm-torch freezes it.
    """
    loaded = _as_loaded(model)
    card = loaded.card
    module = loaded.module
    dtype = _torch_dtype(card, precision)
    if dtype != getattr(torch, card.dtype) or tune_to is not None:
        module = LoadedModel.read(loaded.path).module.to(dtype)  # a fresh copy: .to() and tune change it in place
    if tune_to is not None:
        elec_card = card.long_range.electrostatics
        ep.tune_for_structure(module, tune_to[0], tune_to[1], None if elec_card is None else elec_card.to_json())
    elec = card.long_range.electrostatics
    if not short_range_only:
        if periodic and check_predicted and elec is not None and elec.mode == "predicted":
            checked = ChargeCheckBridge(module, numbers, indices, card.r_cut, dtype, elec.to_json())
            return torch.jit.script(checked.eval())
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
