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

Ewald/PME accuracy: the model's parameters were chosen for a reference charge density. Fixed charges are checked
against the structure's own charges and box when the System is built, predicted ones at the first evaluation of
each Context (``ChargeCheckBridge``; the warning is a torch warning, on stderr); each warns naming the estimate,
the target and the fix. ``tune_electrostatics=True`` chooses the parameters for the structure instead (the same
numbers as the ASE calculator's option and LAMMPS's ``ewald tune``): OpenMM's PME mesh and splitting for "engine",
a tuned copy of the model for "model" (predicted charges need ``createSystem(topology, positions=positions)``).

What is read: the model card (``mlmd.deploy.card.ModelCard``), its ``long_range.electrostatics``
(``ElectrostaticsCard``: mode, method, charges, r_cut, alpha, grid_spacing, accuracy). A card without
``alpha``/``grid_spacing`` gets OpenMM's own PME parameters from ``accuracy`` (as OpenMM's
``ewaldErrorTolerance``).

Layout (one idea per module; no module imports the package, so there is no import cycle):
- ``kernels``: reloading openmm-torch's OpenMM plugins, importing openmmtorch;
- ``model``: the model file and its card as read here (``LoadedModel``, ``resolve_electrostatics``);
- ``bridge``: the nm/kJ TorchScript bridges TorchForce calls;
- ``system``: adding the model (and engine PME) to a System (``add_mlmd_forces``);
- ``potential``: ``MLMDPotential`` and the openmm-ml entry point's factory; ``openmmml``: the openmm-ml
  implementation (imported lazily: it imports openmmml);
- ``reporters``: ``UncertaintyReporter``, ``DomainReporter``; ``topology``: ASE -> Topology; ``steps``: checked
  stepping. ``mlmd md --engine openmm`` is mlmd.md.openmm_md (the MD runner layer imports the engines, never the
  reverse).
"""

from mlmd.engines.openmm.bridge import OpenMMBridge, ShortRangeBridge, build_bridge
from mlmd.engines.openmm.model import (
    ELECTROSTATICS_OPTIONS,
    INTERPOLATION_UNAVAILABLE,
    LoadedModel,
    OpenMMSetupError,
    resolve_electrostatics,
)
from mlmd.engines.openmm.potential import MLMDPotential, MLMDPotentialImplFactory
from mlmd.engines.openmm.reporters import DomainReporter, UncertaintyReporter
from mlmd.engines.openmm.steps import checked_state, checked_step, md_failure
from mlmd.engines.openmm.system import add_mlmd_forces, perpendicular_widths
from mlmd.engines.openmm.topology import topology_from_atoms

__all__ = [
    "DomainReporter",
    "ELECTROSTATICS_OPTIONS",
    "INTERPOLATION_UNAVAILABLE",
    "LoadedModel",
    "MLMDPotential",
    "MLMDPotentialImplFactory",
    "OpenMMBridge",
    "OpenMMSetupError",
    "ShortRangeBridge",
    "UncertaintyReporter",
    "add_mlmd_forces",
    "build_bridge",
    "checked_state",
    "checked_step",
    "md_failure",
    "perpendicular_widths",
    "resolve_electrostatics",
    "topology_from_atoms",
]
