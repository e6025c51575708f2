"""OpenMM adapter: a packaged mlmd model as an openmm-torch ``TorchForce`` (runs in OpenMM's C++ force loop).

Usage from an ordinary OpenMM script::

    import torch                       # before openmmtorch: torch loads the CUDA libraries the wheel links
    from mlmd.engines.openmm import MLMDPotential

    potential = MLMDPotential("model.pt")
    system = potential.createSystem(topology)                      # everything by the model
    potential.addForces(topology, system, atoms=[0, 1, 2])         # add the model to an existing System
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML/MM, mechanical embedding

The same is reachable through openmm-ml, where mlmd registers itself in the ``openmmml.potentials``
entry-point group: ``MLPotential("mlmd", modelPath="model.pt").createSystem(topology)``.

How it works: the packaged model (Å, eV, atomic numbers; see ``mlmd.deploy.packaged``) is wrapped in a small
TorchScript module, :class:`OpenMMBridge`, that bakes in the atomic numbers, the indices of the ML atoms and
the periodicity, converts nm -> Å and eV -> kJ/mol at its boundary and passes OpenMM's (possibly triclinic)
box vectors through as the cell (rows = lattice vectors in both codes). The bridge is saved to a file and
given to ``openmmtorch.TorchForce``, which loads it into libtorch: every force evaluation is C++ -> TorchScript
(neighbour list inside the model, forces by autograd), with no Python callback per step. Do not copy such a
System through ``XmlSerializer``: with the openmmtorch 1.5 wheel, deserializing any TorchForce crashes the
process (a segmentation fault, even for a trivial module); build it again with ``createSystem`` instead
(State XML and checkpoints are unaffected).

Import order: OpenMM loads its plugins when ``openmm`` is first imported, and openmm-torch's need the libraries
torch loads. Importing this module (openmm-ml does, through its entry point) loads them again if openmm came
first, so ordinary scripts work in any order.

Periodicity. A System is periodic when any of its forces uses periodic boundary conditions; an empty System
(as in ``createSystem``) is periodic when the Topology has box vectors; ``periodic=`` overrides both. What a
model needs comes from its card (``ModelCard.requires_periodic`` / ``requires_non_periodic``): a *periodic
model*, one that sums its electrostatics with a periodic method chosen explicitly
(``long_range.electrostatics.method`` "ewald" or "pme"), cannot serve a non-periodic System; a model whose
electrostatics is the direct sum (method "direct") cannot serve a periodic System. Both hold when the model
computes its electrostatics (``electrostatics="model"``); with "engine" OpenMM sums them for either.
Short-range models, and models with method "auto" (the default: Ewald/PME with a box, the direct sum
without), run either way. Periodic boxes must be at least twice the model's cutoff wide in every direction
(OpenMM's minimum-image rule), checked when the System is built and again inside the bridge at every
evaluation (a barostat may shrink the box).

Long range (``electrostatics=``, chosen when the potential is created; None picks what the file supports):
- ``"model"``: the model file's ``forward`` gives the whole energy, with the long-range terms it computes
  itself (Ewald/PME or the direct sum, and D3, inside the TorchScript file). The default when the file
  computes its electrostatics itself or has none;
- ``"engine"``: OpenMM computes the electrostatics: a ``NonbondedForce`` on the model's fixed per-element
  charges, all pairs included (no exclusions, no LJ); PME with the model's own parameters (real-space cutoff,
  alpha, and the mesh its ``grid_spacing`` gives for the box) when periodic, the plain Coulomb sum when not.
  The model then supplies the rest: its short-range entry (``local_energies``, the LAMMPS one, on a
  neighbour list the bridge builds) plus its other long-range terms (D3). Both options give the same energy
  to the Ewald accuracy the model requests. A model that predicts its charges (``mode`` "predicted") is
  refused here: a NonbondedForce holds fixed per-particle charges; it runs with "model" (its total charge
  is 0: OpenMM has no per-System charge).

What is read: the model card (``mlmd.deploy.card.ModelCard``), its ``long_range.electrostatics``
(``ElectrostaticsCard``: mode, method, charges, r_cut, alpha, grid_spacing, accuracy). A card without
``alpha``/``grid_spacing`` gets OpenMM's own PME parameters from ``accuracy`` (as OpenMM's
``ewaldErrorTolerance``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import openmm
import torch
from openmm import app, unit
from torch import nn

from mlmd import keys as K
from mlmd.deploy.card import DEFAULT_MIN_DISTANCE, ElectrostaticsCard, ModelCard
from mlmd.engines.checks import MDError, state_problem
from mlmd.units import ANGSTROM_TO_NM, EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

ELECTROSTATICS_OPTIONS = ("model", "engine")
_COULOMB_TERM = "CoulombTerm"  # class name of mlmd's in-model electrostatics term (mlmd.model.longrange)
_DEFAULT_REAL_SPACE_CUTOFF = 8.0  # Å, mlmd's own default
INTERPOLATION_UNAVAILABLE = (
    "interpolate=True is not available: openmm-ml's interpolation deep-copies the forces through "
    "XmlSerializer, and deserializing a TorchForce crashes the process with openmmtorch 1.5 (segmentation fault)"
)


def _load_torch_plugins() -> list[str]:
    """Load openmm-torch's OpenMM plugins that failed because torch was not imported yet.

    OpenMM loads its plugins when ``openmm`` is first imported. The openmmtorch wheel's plugins link the
    libraries torch loads (libtorch, libnvrtc), so in a script that imports openmm before torch, as ordinary
    OpenMM scripts do, the Reference/CPU TorchForce kernels are missing ("Specified a Platform for a Context
    which does not support all required kernels"). torch is imported by now: load them again.
    Returns the libraries loaded here.
    """
    import re

    loaded = []
    for message in openmm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (\S*OpenMMTorch\w*\.(?:so|dylib|dll)):", message)
        if match and match.group(1) not in _TORCH_PLUGINS_RELOADED:
            _TORCH_PLUGINS_RELOADED.add(match.group(1))
            try:
                openmm.Platform.loadPluginLibrary(match.group(1))
                loaded.append(match.group(1))
            except Exception:  # noqa: BLE001  e.g. the OpenCL plugin without libOpenCL: not ours to fix
                pass
    return loaded


_TORCH_PLUGINS_RELOADED: set[str] = set()
_load_torch_plugins()


class OpenMMSetupError(ValueError):
    """A Topology/System that the model cannot serve: unknown element, periodicity or box mismatch."""


# ----------------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class LoadedModel:
    """A packaged model read once (checksum verified): the module and its card."""

    path: Path
    module: torch.jit.ScriptModule
    card: ModelCard

    @classmethod
    def read(cls, path: str | Path) -> LoadedModel:
        from mlmd.deploy.load import load_model
        from mlmd.engines.allocator import keep_freed_memory

        keep_freed_memory()  # no page faults on every step (mlmd.engines.allocator)
        module, card = load_model(path)
        return cls(Path(path), module, card)


def _as_loaded(model: str | Path | LoadedModel) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else LoadedModel.read(model)


# ------------------------------------------------------------------------------------------ TorchScript bridge


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
    long-range terms (D3), given as ``terms``."""

    def __init__(
        self,
        model: torch.jit.ScriptModule,
        numbers: list[int],
        indices: Optional[list[int]],
        periodic: bool,
        r_cut: float,
        dtype: torch.dtype,
        terms: list[torch.jit.ScriptModule],
    ) -> None:
        super().__init__(model, numbers, indices, periodic, r_cut, dtype)
        from vesin_torch import NeighborList

        self.terms = nn.ModuleList(terms)
        self.nl = NeighborList(cutoff=float(r_cut), full_list=True)

    def energy(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        species = self.model.species_of(self.numbers)
        ijs = self.nl.compute(positions.detach(), cell.detach(), self.periodic, "ijS", True)
        edge_index = torch.stack([ijs[0].to(torch.long), ijs[1].to(torch.long)])
        vectors = positions[edge_index[1]] - positions[edge_index[0]] + ijs[2].to(positions.dtype) @ cell
        energy = self.model.local_energies(species, edge_index, vectors, positions.shape[0]).sum()
        for term in self.terms:
            energy = energy + term(positions, cell, self.numbers, self.pbc).sum()
        return energy


# ------------------------------------------------------------------------------------------- System assembly


def resolve_electrostatics(card: ModelCard, requested: Optional[str]) -> str:
    """"model" or "engine" for this model (see the module docstring); a clear error for an impossible choice."""
    if requested is not None and requested not in ELECTROSTATICS_OPTIONS:
        raise OpenMMSetupError(f"electrostatics must be one of {ELECTROSTATICS_OPTIONS} or None, not {requested!r}")
    if not card.has_electrostatics:
        if requested == "engine":
            raise OpenMMSetupError("electrostatics='engine', but the model records no electrostatics")
        return "model"
    if requested == "engine":
        card.check_fixed_charges(
            "electrostatics='engine' (OpenMM's NonbondedForce PME)", "it holds fixed per-particle charges",
            "Use electrostatics='model' (the default), which sums Ewald/PME on the predicted charges inside the "
            "model", error=OpenMMSetupError,
        )
        if not card.has_local_graph:
            raise OpenMMSetupError("electrostatics='engine' needs the model's local_energies entry, which this file "
                                   "lacks: use electrostatics='model'")
    return requested or "model"


def _torch_dtype(card: ModelCard, precision: Optional[str]) -> torch.dtype:
    if precision is None:
        return getattr(torch, card.dtype)
    table = {"single": torch.float32, "double": torch.float64, "float32": torch.float32, "float64": torch.float64}
    if precision not in table:
        raise OpenMMSetupError(f"precision must be 'single', 'double' or None (the model's own), not {precision!r}")
    return table[precision]


def _atomic_numbers(topology: app.Topology, atoms: list[int], card: ModelCard) -> list[int]:
    all_atoms = list(topology.atoms())
    known = set(card.atomic_numbers)
    numbers = []
    for i in atoms:
        if i < 0 or i >= len(all_atoms):
            raise OpenMMSetupError(f"atom index {i} is outside the Topology ({len(all_atoms)} atoms)")
        atom = all_atoms[i]
        where = f"atom {i} ({atom.name} in residue {atom.residue.name} {atom.residue.id})"
        if atom.element is None:
            raise OpenMMSetupError(f"{where} has no element (virtual site or extra particle?): the model needs one")
        z = int(atom.element.atomic_number)
        if z not in known:
            raise OpenMMSetupError(
                f"{where} is {atom.element.symbol} (Z={z}), an element this model does not know; "
                f"it knows {', '.join(card.elements)}"
            )
        numbers.append(z)
    return numbers


def _system_is_periodic(topology: app.Topology, system: openmm.System, periodic: Optional[bool]) -> bool:
    if periodic is not None:
        return bool(periodic)
    if system.getNumForces() == 0:
        return topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
    return bool(system.usesPeriodicBoundaryConditions())


def _box_angstrom(topology: app.Topology, system: openmm.System) -> np.ndarray:
    vectors = topology.getPeriodicBoxVectors()
    if vectors is None:
        vectors = system.getDefaultPeriodicBoxVectors()
    return np.array([[v[k].value_in_unit(unit.angstrom) for k in range(3)] for v in vectors], dtype=float)


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """The three distances between opposite faces of a cell (rows = lattice vectors)."""
    volume = abs(float(np.linalg.det(cell)))
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return volume / areas


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
    names = [getattr(t, "original_name", "") for t in terms]
    if not card.has_local_graph or names.count(_COULOMB_TERM) != 1:
        raise OpenMMSetupError(
            f"{loaded.path} computes its electrostatics inside the model file, and OpenMM cannot take them over: "
            f"it needs the local_energies entry and one {_COULOMB_TERM} among the long-range terms (found "
            f"{names}); use electrostatics='model'"
        )
    others = [t for t, n in zip(terms, names) if n != _COULOMB_TERM]
    bridge = ShortRangeBridge(module, numbers, indices, periodic, card.r_cut, dtype, others)
    return torch.jit.script(bridge.eval())


def _import_openmmtorch() -> Any:
    """openmmtorch, imported after torch (which loads the CUDA libraries the wheel links) and without the
    root-logger warning its SWIG module triggers by importing the deprecated ``simtk.openmm``."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import openmmtorch
    finally:
        logging.disable(previous)
    return openmmtorch


def _torch_force(bridge: torch.jit.ScriptModule, periodic: bool) -> openmm.Force:
    openmmtorch = _import_openmmtorch()

    fd, path = tempfile.mkstemp(prefix="mlmd_openmm_", suffix=".pt")
    os.close(fd)
    try:
        bridge.save(path)
        force = openmmtorch.TorchForce(path)  # the file is read into memory here
    finally:
        os.unlink(path)
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("mlmd")
    return force


def _engine_electrostatics(
    n_particles: int, atoms: list[int], numbers: list[int], elec: ElectrostaticsCard, periodic: bool,
    box: Optional[np.ndarray],
) -> openmm.NonbondedForce:
    """OpenMM's own Coulomb sum (PME, or no cutoff when not periodic) on the model's fixed charges (the card
    validated that a fixed-charge model has one for each of its elements; predicted ones are refused before)."""
    force = openmm.NonbondedForce()
    force.setName("mlmd electrostatics")
    if periodic:
        assert box is not None
        force.setNonbondedMethod(openmm.NonbondedForce.PME)
        cutoff = elec.r_cut if elec.r_cut is not None else _DEFAULT_REAL_SPACE_CUTOFF
        half = float(perpendicular_widths(box).min()) / 2
        if cutoff > half:
            raise OpenMMSetupError(
                f"the model's Ewald real-space cutoff ({cutoff} Å) is more than half the smallest box width "
                f"({2 * half:.4f} Å): OpenMM's PME needs a larger box for electrostatics='engine'"
            )
        force.setCutoffDistance(cutoff * ANGSTROM_TO_NM)
        if elec.alpha is not None and elec.grid_spacing is not None:  # the model's own splitting and mesh
            from mlmd.ewald_params import openmm_pme_parameters

            pme = openmm_pme_parameters({**elec.to_json(), "r_cut": cutoff}, torch.tensor(box))
            force.setPMEParameters(pme["alpha_per_nm"], pme["nx"], pme["ny"], pme["nz"])
        else:
            force.setEwaldErrorTolerance(elec.accuracy)
        force.setUseDispersionCorrection(False)
    else:
        force.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    charge = dict(zip(atoms, (elec.charges[z] for z in numbers)))
    for i in range(n_particles):
        force.addParticle(charge.get(i, 0.0), 1.0, 0.0)
    return force


def add_mlmd_forces(
    model: str | Path | LoadedModel,
    topology: app.Topology,
    system: openmm.System,
    atoms: Optional[Iterable[int]] = None,
    forceGroup: int = 0,
    electrostatics: Optional[str] = None,
    precision: Optional[str] = None,
    periodic: Optional[bool] = None,
) -> list[openmm.Force]:
    """Add the model (and, with ``electrostatics='engine'``, OpenMM's PME on its charges) to ``system``.

    Returns the forces added. ``atoms``: indices of the ML atoms (None: all).
    """
    loaded = _as_loaded(model)
    card = loaded.card
    engine = resolve_electrostatics(card, electrostatics) == "engine"
    # an empty System is allowed (openmm-ml's interpolation collects the forces in one): the Topology counts
    n_particles = topology.getNumAtoms()
    if system.getNumParticles() not in (0, n_particles):
        raise OpenMMSetupError(
            f"the Topology has {n_particles} atoms but the System {system.getNumParticles()} particles"
        )
    indices = list(range(n_particles)) if atoms is None else [int(i) for i in atoms]
    if len(set(indices)) != len(indices):
        raise OpenMMSetupError("the ML atom list contains duplicates")
    if not indices:
        raise OpenMMSetupError("no atoms selected for the model")
    numbers = _atomic_numbers(topology, indices, card)

    is_periodic = _system_is_periodic(topology, system, periodic)
    # what the file's own electrostatics needs (with electrostatics='engine', OpenMM sums them either way)
    if card.requires_periodic and not is_periodic and not engine:
        raise OpenMMSetupError(
            "this is a periodic model (it sums its electrostatics with Ewald/PME inside the model) but the System "
            "is not periodic: give the Topology box vectors (topology.setPeriodicBoxVectors) or use a periodic MM "
            "System"
        )
    if card.requires_non_periodic and is_periodic and not engine:
        raise OpenMMSetupError(
            "this model is for non-periodic systems only (its in-model electrostatics is the direct sum) but the "
            "System is periodic"
        )
    box = None
    if is_periodic:
        box = _box_angstrom(topology, system)
        if system.getNumForces() == 0 and topology.getPeriodicBoxVectors() is not None:
            system.setDefaultPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
        width = float(perpendicular_widths(box).min())
        if width < 2 * card.r_cut:
            raise OpenMMSetupError(
                f"periodic box too small for the model: its smallest width is {width:.4f} Å, less than twice "
                f"the cutoff (2 × {card.r_cut} Å = {2 * card.r_cut} Å); use a larger box (replicate it)"
            )

    elec = card.long_range.electrostatics
    subset = None if indices == list(range(n_particles)) else indices
    bridge = build_bridge(loaded, numbers, subset, is_periodic, precision, short_range_only=engine)
    added: list[openmm.Force] = [_torch_force(bridge, is_periodic)]
    if engine and elec is not None:
        added.append(_engine_electrostatics(n_particles, indices, numbers, elec, is_periodic, box))
    for force in added:
        force.setForceGroup(forceGroup)
        system.addForce(force)
    return added


# ------------------------------------------------------------------------------------------ openmm-ml plugin


class MLMDPotentialImplFactory:
    """openmm-ml factory for ``MLPotential("mlmd", modelPath=..., electrostatics=None, precision=None)``.

    Registered through the ``openmmml.potentials`` entry point. It is duck-typed (openmm-ml only calls
    ``createImpl``) rather than a subclass of ``openmmml.mlpotential.MLPotentialImplFactory``: openmm-ml imports
    this module while loading its entry points, so importing openmmml here would be circular.
    """

    def createImpl(self, name: str, modelPath: str | Path | None = None, **args: Any) -> Any:  # noqa: N802
        from mlmd.engines._openmmml import MLMDPotentialImpl

        if modelPath is None:
            raise OpenMMSetupError('MLPotential("mlmd") needs modelPath="model.pt" (a packaged mlmd model)')
        return MLMDPotentialImpl(name, modelPath, **args)


def _register_with_openmmml() -> Any:
    from openmmml import MLPotential

    if "mlmd" not in MLPotential._implFactories:  # running from a checkout that was not pip-installed
        MLPotential.registerImplFactory("mlmd", MLMDPotentialImplFactory())
    return MLPotential


class MLMDPotential:
    """An mlmd model file as an OpenMM potential (the openmm-ml ``MLPotential("mlmd", ...)`` API).

    ``electrostatics``: "model" (the file's own long-range terms), "engine" (OpenMM PME on the model's
    fixed charges) or None (what the file supports); ``precision``: None (the model's dtype), "single" or
    "double".
    """

    def __init__(
        self, model: str | Path, electrostatics: Optional[str] = None, precision: Optional[str] = None
    ) -> None:
        self.path = Path(model)
        ml_potential = _register_with_openmmml()
        self._potential = ml_potential("mlmd", modelPath=str(self.path), electrostatics=electrostatics,
                                       precision=precision)
        impl = self._potential._impl
        self.card: ModelCard = impl.model.card
        self.electrostatics: str = impl.electrostatics

    @property
    def mlpotential(self) -> Any:
        """The underlying ``openmmml.MLPotential``."""
        return self._potential

    def createSystem(self, topology: app.Topology, removeCMMotion: bool = True, **args: Any) -> openmm.System:  # noqa: N802
        """A System where the model computes every interaction (masses from the Topology's elements)."""
        return self._potential.createSystem(topology, removeCMMotion=removeCMMotion, **args)

    def addForces(  # noqa: N802
        self, topology: app.Topology, system: openmm.System, atoms: Optional[Iterable[int]] = None,
        forceGroup: int = 0, **args: Any,
    ) -> None:
        """Add the model's forces for ``atoms`` (None: all) to an existing System."""
        self._potential._impl.addForces(topology, system, None if atoms is None else list(atoms), forceGroup, **args)

    def createMixedSystem(  # noqa: N802
        self, topology: app.Topology, system: openmm.System, atoms: Iterable[int], **args: Any
    ) -> openmm.System:
        """ML/MM by mechanical embedding (openmm-ml's): the model replaces the interactions among ``atoms``
        (their MM bonds, angles, torsions, constraints and mutual nonbonded terms are removed); the ML–MM
        coupling stays with the MM force field's nonbonded terms. ``interpolate=True`` is refused (see
        ``INTERPOLATION_UNAVAILABLE``)."""
        if args.get("interpolate"):
            raise OpenMMSetupError(INTERPOLATION_UNAVAILABLE)
        return self._potential.createMixedSystem(topology, system, list(atoms), **args)


# ------------------------------------------------------------------------------------------------- helpers


class UncertaintyReporter:
    """OpenMM reporter: the committee spread of a packaged ensemble model every `reportInterval` steps.

    Evaluates the model file on the current positions (its own copy, outside the TorchForce: the cost is one
    extra model call per report), writes step, energy_std and per-atom force spread through an
    :class:`mlmd.uncertainty.UncertaintyGate` (CSV log, extxyz harvest of frames above threshold, optional
    stop). `atoms`: indices of the ML particles (default: all, in order).

    >>> simulation.reporters.append(UncertaintyReporter("committee.pt", 100, topology, log="unc.csv",
    ...                                                 threshold=0.3, harvest="uncertain.xyz"))
    """

    def __init__(
        self, model: str | Path, reportInterval: int, topology: app.Topology,  # noqa: N803 (OpenMM naming)
        atoms: Optional[list[int]] = None, threshold: float = float("inf"), harvest: str | Path | None = None,
        stop: bool = False, log: str | Path | None = None, timestep_fs: float = 0.5,
    ) -> None:
        from mlmd.deploy.load import load_model
        from mlmd.uncertainty import UncertaintyGate

        self.module, self.card = load_model(model)
        if not self.card.has_uncertainty:
            raise OpenMMSetupError(f"{model} is not a committee model: train it with `mlmd train --ensemble K`")
        self.interval = int(reportInterval)
        all_atoms = list(topology.atoms())
        self.indices = list(range(len(all_atoms))) if atoms is None else [int(i) for i in atoms]
        self.numbers = np.array([all_atoms[i].element.atomic_number for i in self.indices])
        self.periodic = topology.getPeriodicBoxVectors() is not None
        self.gate = UncertaintyGate(threshold, harvest, stop, log, timestep_fs)
        self.last: dict[str, Any] = {}

    def describeNextReport(self, simulation: app.Simulation) -> dict[str, Any]:  # noqa: N802
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions"]}

    def report(self, simulation: app.Simulation, state: openmm.State) -> None:
        from ase import Atoms

        from mlmd.uncertainty import committee_uncertainty

        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[self.indices]
        atoms = Atoms(self.numbers, positions=pos, pbc=self.periodic)
        if self.periodic:
            atoms.cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        self.last = committee_uncertainty(self.module, self.card, atoms)
        self.gate.check(simulation.currentStep, atoms, float(self.last[K.ENERGY_STD]), self.last[K.FORCES_STD])


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


# ------------------------------------------------------------------------------------------- `mlmd md` engine


def _state_arrays(simulation: app.Simulation) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Positions (Å), velocities (Å/ps) and the periodic cell (Å, None if not periodic) of the Context."""
    st = simulation.context.getState(getPositions=True, getVelocities=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
    vel = st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond) * NM_TO_ANGSTROM
    cell = None
    if simulation.system.usesPeriodicBoundaryConditions():
        cell = np.asarray(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_TO_ANGSTROM
    return np.asarray(pos), np.asarray(vel), cell


def md_failure(
    simulation: app.Simulation, err: Exception, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE
) -> MDError:
    """The :class:`mlmd.engines.checks.MDError` for an OpenMMException raised while OpenMM computed forces.

    The model raises inside the TorchForce (atoms too close, non-finite positions or energy), and OpenMM raises
    on NaN coordinates; the Context still holds the configuration that failed, which is examined to name the
    atoms (System particle indices); the model's own message is the fallback.
    """
    from mlmd.deploy.load import unwrap_torchscript_error

    step = simulation.context.getStepCount()  # the configuration after this many steps failed
    dt_ps = simulation.integrator.getStepSize().value_in_unit(unit.picosecond)
    pos, vel, cell = _state_arrays(simulation)
    problem = state_problem(pos, vel, dt_ps, r_cut, min_distance, cell)
    if problem is None:
        problem = str(unwrap_torchscript_error(err)).strip().splitlines()[-1]
    return MDError(f"OpenMM MD stopped at step {step}: {problem}")


def checked_step(
    simulation: app.Simulation, steps: int, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE
) -> None:
    """``simulation.step(steps)``, stopping with :class:`mlmd.engines.checks.MDError` naming the step and the
    atoms when the state breaks (the rules are in mlmd.engines.checks): a failed force evaluation is examined
    by :func:`md_failure`; after the steps, positions and velocities are checked once more (a non-finite or
    runaway velocity).

    The steps run under TorchScript's plain executor (as in LAMMPS and ASE): openmm-torch calls the model from
    C++ on this thread, and the default profiling executor costs ~15% more CPU per step (5,184 water atoms:
    518 -> 439 ms). The Context must exist already (it does once the Simulation is built): one created inside
    the block cannot call its model's methods. Own scripts get the same with
    ``with torch.jit.optimized_execution(False): simulation.step(n)``."""
    try:
        with torch.jit.optimized_execution(False):
            simulation.step(steps)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None
    dt_ps = simulation.integrator.getStepSize().value_in_unit(unit.picosecond)
    pos, vel, cell = _state_arrays(simulation)
    problem = state_problem(pos, vel, dt_ps, r_cut, None, cell)
    if problem:
        raise MDError(f"OpenMM MD stopped at step {simulation.context.getStepCount()}: {problem}")


def checked_state(
    simulation: app.Simulation, r_cut: float, min_distance: float = DEFAULT_MIN_DISTANCE, **kwargs: Any
) -> openmm.State:
    """``simulation.context.getState(**kwargs)``; getEnergy/getForces evaluate the model on the current positions
    (after ``step(n)`` they have not been yet), so a failure there is reported as in :func:`checked_step`."""
    try:
        with torch.jit.optimized_execution(False):
            return simulation.context.getState(**kwargs)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None


def run_md(
    model: str | Path,
    structure: str | Path,
    steps: int = 200,
    temperature: float = 300.0,
    timestep_fs: float = 0.5,
    replicate: tuple[int, int, int] | list[int] = (1, 1, 1),
    log_every: int = 20,
    trajectory: str | Path | None = None,
    seed: int = 0,
    ensemble: str = "nvt",
    threads: int = 1,
    platform: str = "CPU",
    uncertainty: Optional[dict[str, Any]] = None,
) -> dict[str, float]:
    """`mlmd md --engine openmm`: Langevin (LangevinMiddleIntegrator, 1/ps) NVT, or NPT with a Monte Carlo
    barostat at 1 bar; DCD trajectory (with a PDB of the first frame beside it). `uncertainty`: keyword
    arguments of UncertaintyReporter (threshold, harvest, stop, log) for a committee model, checked every
    log_every steps."""
    import time

    import ase.io

    if ensemble not in ("nvt", "npt"):
        raise ValueError(f"the OpenMM engine runs nvt or npt, not {ensemble!r}")
    torch.set_num_threads(max(1, int(threads)))
    atoms = ase.io.read(str(structure)).repeat(tuple(replicate))
    top, positions = topology_from_atoms(atoms)
    potential = MLMDPotential(model)
    system = potential.createSystem(top)
    r_cut, min_distance = potential.card.r_cut, potential.card.min_distance
    if ensemble == "npt":
        if not system.usesPeriodicBoundaryConditions():
            raise ValueError("NPT needs a periodic structure")
        system.addForce(openmm.MonteCarloBarostat(1.0 * unit.bar, temperature * unit.kelvin, 25))
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, 1.0 / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(seed + 1)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": str(max(1, int(threads)))} if platform == "CPU" else {}
    simulation = app.Simulation(top, system, integrator, plat, props)
    simulation.context.setPositions(positions)
    try:  # evaluates the forces of the starting structure
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 1)
    except openmm.OpenMMException as err:
        raise md_failure(simulation, err, r_cut, min_distance) from None
    if trajectory:
        trajectory = Path(trajectory)
        if trajectory.suffix.lower() != ".dcd":
            raise ValueError(f"the OpenMM engine writes DCD trajectories: name it *.dcd, not {trajectory.name}")
        with open(trajectory.with_suffix(".pdb"), "w") as f:
            app.PDBFile.writeFile(top, positions, f)
        simulation.reporters.append(app.DCDReporter(str(trajectory), log_every))
    unc: Optional[UncertaintyReporter] = None
    if uncertainty is not None:
        unc = UncertaintyReporter(model, log_every, top, timestep_fs=timestep_fs, **uncertainty)
        simulation.reporters.append(unc)
    n_dof = 3 * system.getNumParticles() - 3
    kb = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    print(
        f"OpenMM {ensemble.upper()} ({plat.getName()} platform, TorchForce): {len(atoms)} atoms, {steps} steps of "
        f"{timestep_fs} fs at {temperature} K"
    )
    print(f"{'step':>8}{'time/ps':>10}{'Epot/eV':>16}{'Ekin/eV':>12}{'T/K':>9}{'ms/step':>10}"
          + (f"{'Estd/eV':>10}{'Fstd_max':>10}" if unc else ""))
    t0 = last = time.perf_counter()
    done = 0
    temp = float("nan")
    while done < steps:
        n = min(log_every, steps - done)
        checked_step(simulation, n, r_cut, min_distance)
        done += n
        now = time.perf_counter()
        st = checked_state(simulation, r_cut, min_distance, getEnergy=True)
        epot = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
        ekin_kj = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not np.isfinite(epot):  # a model packaged before the model checked its energy itself
            raise MDError(f"OpenMM MD stopped at step {simulation.context.getStepCount()}: the model gave a "
                          "non-finite energy")
        temp = 2 * ekin_kj / (n_dof * kb)
        print(
            f"{done:>8}{done * timestep_fs / 1000:>10.4f}{epot:>16.4f}{ekin_kj / EV_TO_KJ_PER_MOL:>12.4f}"
            f"{temp:>9.1f}{(now - last) / n * 1000:>10.1f}"
            + (f"{float(unc.last[K.ENERGY_STD]):>10.4f}{float(unc.last[K.FORCES_STD].max()):>10.4f}" if unc else ""),
            flush=True,
        )
        last = time.perf_counter()
    wall = time.perf_counter() - t0
    print(f"done: {steps} steps in {wall:.1f} s ({wall / max(steps, 1) * 1000:.1f} ms/step)")
    result = {"ms_per_step": wall / max(steps, 1) * 1000, "temperature": temp}
    if unc is not None:
        unc.gate.close()
        result["n_harvested"] = unc.gate.n_harvested
    return result
