"""ASE calculator over a packaged mlmd model file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from mlmd import keys as K
from mlmd.deploy.card import ModelCard
from mlmd.deploy.compiled import CompiledModel, usable
from mlmd.deploy.load import load_model, unwrap_torchscript_error
from mlmd.engines.allocator import keep_freed_memory
from mlmd.engines.checks import atom_list
from mlmd.engines.domain import DomainMonitor
from mlmd.ewald_params import check_accuracy, tune_for_structure


class MLMDCalculator(Calculator):
    """Energy, free_energy, forces, stress, per-atom energies and (models with electrostatics) charges from a
    packaged model (.pt).

    A committee model (`mlmd train --ensemble K`) also gives its uncertainty with every evaluation, at no
    extra model cost: energy_std (eV), forces_std (eV/Å per atom), energies_std, member_energies.

    >>> atoms.calc = MLMDCalculator("model.pt")
    >>> atoms.calc.get_property("forces_std", atoms)

    A model that predicts its charges conserves the total charge ``atoms.info["charge"]`` (0 when absent);
    ``atoms.get_charges()`` gives them.

    A model with electrostatics has its Ewald/PME accuracy checked once per run (the first periodic evaluation,
    and again when the atoms or the total charge change): a warning when the estimated force error for this
    structure exceeds the model's target. ``tune_electrostatics=True`` instead re-chooses the parameters for the
    structure's own charges and cell, so that the target holds (mlmd.ewald_params.tune_for_structure), as
    OpenMM's ``MLMDPotential(tune_electrostatics=True)`` and LAMMPS's ``pair_style mlmd ... ewald tune`` (predicted
    charges) or ``mlmd lammps-input --structure`` (fixed charges) do: the same parameters for the same structure
    (``mlmd validate --tune-electrostatics``). Off by default, as in the other engines.

    A model packaged with ``--compile aoti`` has a compiled copy beside it (model.aoti.pt2, on its card): the
    calculator runs that (1.7-2.2x less CPU per step, same results to float round-off) when it loads in this torch;
    ``compiled=False`` runs the TorchScript file, ``compiled=True`` makes a missing or unusable copy an error.

    ``domain`` ("warn", "stop" or "off"; mlmd.engines.domain): every evaluation is compared with the training
    domain the model card records; the first one outside gives one DomainWarning naming the evaluation (counted
    from 0: in an ASE MD run started with this calculator, the MD step) and the atoms, or with "stop" an
    OutOfDomainError. ``calc.domain.found`` keeps the message.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "charges"]
    uncertainty_properties = ["energy_std", "forces_std", "energies_std", "member_energies"]

    def __init__(
        self,
        model: str | Path,
        dtype: str | None = None,
        threads: int | None = None,
        tune_electrostatics: bool = False,
        compiled: bool | None = None,
        domain: str = "warn",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        keep_freed_memory()  # no page faults on every step (mlmd.engines.allocator)
        self.model_path = str(model)
        self.module, self.card = load_model(model)
        card: ModelCard = self.card
        self.r_cut: float = card.r_cut
        self.min_distance: float = card.min_distance
        self.dtype = getattr(torch, dtype or card.dtype)
        if self.dtype != getattr(torch, card.dtype):
            self.module = self.module.to(self.dtype)
        if threads:
            torch.set_num_threads(threads)
        self.n_members = card.n_members
        self.has_variance_head = card.has_variances
        if self.has_variance_head:  # aleatoric head: predicted noise of the reference energies
            self.implemented_properties = self.implemented_properties + ["energy_std_aleatoric"]
        # a committee's uncertainty() gives the means and the spread from the same forward pass
        self.with_uncertainty = card.has_uncertainty
        if self.with_uncertainty:
            self.implemented_properties = self.implemented_properties + self.uncertainty_properties
        # only a predicted-charge model takes the total charge (and older model files lack the argument)
        self.predicts_charges = card.takes_total_charge
        # the model's own Ewald/PME parameters (export writes the card's electrostatics from the file's own term)
        elec = card.long_range.electrostatics
        self.electrostatics: dict[str, Any] | None = None if elec is None else elec.to_json()
        self.tune_electrostatics = bool(tune_electrostatics)
        self._prepared_for: tuple | None = None
        self.compiled: CompiledModel | None = self._load_compiled(model, compiled)
        self.domain = DomainMonitor(card, domain)
        self.evaluations = 0  # positions evaluated so far: the MD step of an ASE run started with this calculator

    def _load_compiled(self, model: str | Path, wanted: bool | None) -> CompiledModel | None:
        if wanted is False:
            return None
        card: ModelCard = self.card
        path, why = usable(card.compiled, model)
        if path is not None and self.dtype != getattr(torch, card.dtype):
            path, why = None, f"it computes in {card.dtype}, not {self.dtype}"
        if path is not None and (card.is_committee or card.long_range.terms or card.has_charges):
            path, why = None, "it holds the short-range model only, and this model has more"
        if path is None:
            if wanted:
                raise ValueError(f"{model}: cannot run its compiled copy: {why}")
            if card.compiled is not None:
                warnings.warn(f"{model}: running the TorchScript model, not the compiled copy: {why}", stacklevel=3)
            return None
        return CompiledModel(path, card.r_cut, self.dtype)

    def _check_elements(self, atoms: Atoms) -> None:
        """Elements the model was not trained on, named with the atoms that carry them (the model's own check,
        inside TorchScript, can only give an atomic number)."""
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.card.atomic_numbers))
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            where = atom_list(np.flatnonzero(np.isin(atoms.numbers, unknown)))
            raise ValueError(f"element(s) {names} (atom(s) {where}) not in model {self.model_path}: it knows "
                             f"{', '.join(self.card.elements)}")

    @staticmethod
    def total_charge(atoms: Atoms) -> float:
        return float(atoms.info.get("charge", 0.0))

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and self.total_charge(atoms) != self.total_charge(self.atoms):
            changes.append("total_charge")
        return changes

    def _prepare_electrostatics(self, args: list[Any]) -> None:
        """Once per run (the first periodic evaluation, and when the atoms or the total charge change; not when
        they move or the cell changes): tune the Ewald/PME parameters to the structure, or check their accuracy."""
        key = (tuple(args[2].tolist()), self.total_charge(self.atoms))
        if key == self._prepared_for or not self.card.provides(K.ENTRY_CHARGES):
            return
        self._prepared_for = key
        fixed = self.card.fixed_charges
        if fixed:
            # the card's table: files whose module lost its own copy in an earlier repackage still run
            charges = torch.tensor([fixed[int(z)] for z in args[2].tolist()], dtype=torch.float64)
        else:
            with torch.jit.optimized_execution(False):
                charges = self.module.charges(*args[:4], *args[5:]).double()
        if self.tune_electrostatics:
            tune_for_structure(self.module, charges, args[1].double(), self.electrostatics)
        else:
            check_accuracy(self.electrostatics, charges, args[1].double())

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        pbc = np.asarray(a.pbc, dtype=bool)
        cell = np.asarray(a.cell.array, dtype=float)
        if pbc.any() and abs(np.linalg.det(cell)) < 1e-6:
            raise ValueError(f"periodic system (pbc={pbc.tolist()}) given no cell: set atoms.cell or pbc=False")
        if "numbers" in system_changes:
            self._check_elements(a)
        pos = torch.as_tensor(a.positions, dtype=self.dtype)
        args = [
            pos,
            torch.as_tensor(cell, dtype=self.dtype),
            torch.as_tensor(a.numbers, dtype=torch.long),
            torch.as_tensor(pbc),
            bool(pbc.all()) and "stress" in properties,
        ]
        if self.predicts_charges:  # single models only: committees of predicted-charge models are refused
            args.append(self.total_charge(a))
        if self.electrostatics and pbc.all():
            self._prepare_electrostatics(args)
        entry = self.module.uncertainty if self.with_uncertainty else self.module.compute
        try:
            if self.compiled is not None:  # packaging compiles only models that compute() is this for
                out = self.compiled.compute(torch.as_tensor(a.positions, dtype=torch.float64),
                                            torch.as_tensor(cell, dtype=torch.float64),
                                            self.module.species_of(args[2]), args[3], args[4], self.min_distance)
            else:
                # TorchScript's profiling executor re-specialises on every new graph size and runs the backward
                # through its own unfused autodiff: the plain executor is faster and lighter here (as in LAMMPS)
                with torch.jit.optimized_execution(False):
                    out = entry(*args)
        except torch.jit.Error as err:
            raise unwrap_torchscript_error(err) from None
        forces = out[K.FORCES].double().numpy()
        energies = out[K.ATOMIC_ENERGIES].double().numpy()
        # the total is the sum of the per-atom energies (a committee: of their member means), taken here in
        # float64: the model's own float32 sum loses ~1e-6 eV/atom at 10^4 atoms (LAMMPS sums in double too)
        e = float(np.sum(energies)) if energies.shape[0] else float(out[K.ENERGY])
        bad = ~np.isfinite(energies) | ~np.isfinite(forces).all(axis=1)
        if bad.any() or not np.isfinite(e):  # models packaged before the model checked this itself
            where = f" for atom(s) {atom_list(np.flatnonzero(bad))}" if bad.any() else ""
            raise ValueError(f"the model gave a non-finite energy or force{where}")
        step, self.evaluations = self.evaluations, self.evaluations + 1
        if self.domain.active:
            self.domain.check(f"ASE MD step {step} (evaluation {step} of this calculator)", a.positions, a.numbers,
                              cell, pbc)
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = forces
        self.results["energies"] = energies
        if self.has_variance_head:
            variances = self.module.atomic_variances(*args[:4]).double().numpy()
            self.results["energy_std_aleatoric"] = float(np.sqrt(variances.sum()))
        if self.with_uncertainty:
            self.results["energy_std"] = float(out[K.ENERGY_STD])
            self.results["forces_std"] = out[K.FORCES_STD].double().numpy()
            self.results["energies_std"] = out[K.ATOMIC_ENERGIES_STD].double().numpy()
            self.results["member_energies"] = out[K.MEMBER_ENERGIES].double().numpy()
        if K.CHARGES in out:
            self.results["charges"] = out[K.CHARGES].double().numpy()
        elif "charges" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("this model has no electrostatics, so no charges")
        if K.STRESS in out:
            s = out[K.STRESS].double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")
