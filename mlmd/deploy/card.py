"""The model card: the one typed description of a packaged model file, written by export and read by every engine.

A packaged model (see mlmd.deploy.packaged) is a TorchScript archive with this card as the extra file
``mlmd_metadata.json`` (mlmd.keys.META_FILE). The card says what the file is (elements, cutoff and interaction
range, dtype, units, committee size, long-range terms, charges mode, the closest distance the model accepts)
and what it provides (``entry_points``: the TorchScript methods it has, from which the capability properties
follow). Engines ask the card, never the module: ``card.has_uncertainty`` rather than probing for a method.

JSON keys are the field names (constants in mlmd.keys, CARD_*); the LAMMPS plugin reads the card by these names
with the rules of from_dict and validate (plugins/lammps/mlmd_card.cpp: it accepts exactly the cards this module
accepts, tests/fuzz/test_fuzz_card.py), and both hold the card against the module (mlmd.deploy.load). The module
imports neither torch nor the model code (the LAMMPS engine reads cards at every ``lmp`` start).

Reading older cards (format 1, mlmd 0.1.0 on): fields they lack get the defaults documented on each field;
``entry_points`` and ``min_distance`` of files that lack them are taken from the module by the loader
(mlmd.deploy.load); sub-cards that spell the length unit "Å" read as "angstrom"; keys this mlmd does not know
are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional, Union

from mlmd import MODEL_FORMAT_VERSION, __version__
from mlmd import keys as K
from mlmd.deploy.card_parts import (
    CardError,
    CompiledCard,
    DispersionCard,
    ElectrostaticsCard,
    LongRange,
    Units,
    field_error,
    read_number,
    read_object,
    read_optional_number,
)
from mlmd.deploy.domain import TrainingDomain, domain_from_card_value
from mlmd.units import ENERGY_UNIT, LENGTH_UNIT

__all__ = [
    "DEFAULT_MIN_DISTANCE", "DTYPES", "TRAINING_FIELDS", "CardError", "CompiledCard", "DispersionCard",
    "ElectrostaticsCard", "LongRange", "ModelCard", "Units",
]

# Å: two atoms closer than this are an error in every engine (the model file's own min_distance attribute, the
# card's field, and the engines' MD checks all take it from here)
DEFAULT_MIN_DISTANCE = 0.1
DTYPES = ("float32", "float64")
_SHA256 = re.compile(r"[0-9a-f]{64}(\+[0-9a-f]{64})*")


# what package() takes from the training run (everything else on the card comes from the model itself)
TRAINING_FIELDS = (K.CARD_TRAINING_DATA_SHA256, K.CARD_TRAINING_NUMBER_DENSITY, K.CARD_TRAINING_DOMAIN, K.CARD_EPOCHS,
                   K.CARD_METRICS, K.CARD_MEMBER_METRICS)


@dataclass(frozen=True)
class ModelCard:
    """What a packaged model file is and provides. Lengths in Å, energies in eV, charges in e (``units``)."""

    elements: list[str]  # chemical symbols, in the model's species order
    atomic_numbers: list[int]  # the same species as atomic numbers
    r_cut: float  # Å, the cutoff of one interaction layer
    n_layers: int  # message-passing layers
    dtype: str  # "float32" | "float64": the dtype of the weights and of the inputs the file expects
    interaction_range: float = 0.0  # Å, n_layers * r_cut: how far ghost atoms must reach (0: computed)
    format_version: int = MODEL_FORMAT_VERSION
    mlmd_version: str = __version__  # the mlmd that packaged the file
    created: str = ""  # ISO 8601, UTC
    model_kind: str = "equivariant"  # hparams' kind: "equivariant", "behler_parrinello" or "ensemble"
    units: Units = field(default_factory=Units)
    n_members: int = 1  # committee size (cards from before committees lack it: single models)
    long_range: LongRange = field(default_factory=LongRange)
    charges_mode: str = K.CHARGES_NONE  # "none", "fixed" or "predicted" (as long_range.electrostatics.mode)
    min_distance: float = DEFAULT_MIN_DISTANCE  # Å: closer atoms are refused
    entry_points: list[str] = field(default_factory=list)  # the TorchScript methods the file provides (K.ENTRY_*)
    hparams: dict[str, Any] = field(default_factory=dict)  # architecture, enough to rebuild the potential
    metrics: dict[str, Any] = field(default_factory=dict)  # validation/test errors of the training run
    member_metrics: Optional[list[dict[str, Any]]] = None  # a committee's per-member test metrics
    epochs: Union[int, list[int], None] = None  # training epochs (a list for a committee)
    training_data_sha256: Optional[str] = None  # of the training data ("a+b" for several files)
    training_number_density: Optional[float] = None  # atoms/Å^3, median of the periodic training cells
    # shortest distance per element pair, volume-per-atom range, largest force and the limits MD is checked
    # against (mlmd.deploy.domain); None in files packaged before it or without their training data
    training_domain: Optional[TrainingDomain] = None
    weights_sha256: Optional[str] = None  # of every parameter and buffer (mlmd.deploy.checksum)
    compiled: Optional[CompiledCard] = None  # a compiled copy beside the file (mlmd package --compile aoti)

    def __post_init__(self) -> None:
        if not self.interaction_range:
            object.__setattr__(self, "interaction_range", float(self.r_cut) * int(self.n_layers))

    # ------------------------------------------------------------------------------------------ capabilities

    def provides(self, entry_point: str) -> bool:
        return entry_point in self.entry_points

    @property
    def is_committee(self) -> bool:
        return self.n_members > 1

    @property
    def has_uncertainty(self) -> bool:
        """A committee whose uncertainty() gives the means and the spread in one call."""
        return self.is_committee and self.provides(K.ENTRY_UNCERTAINTY)

    @property
    def has_member_entry(self) -> bool:
        """local_energies_of_member (older committee files have local_member_energies only)."""
        return self.provides(K.ENTRY_LOCAL_ENERGIES_OF_MEMBER)

    @property
    def has_layers(self) -> bool:
        """The layer-by-layer entries (layer_widths/embed/interaction/readout) of a message-passing model."""
        return all(self.provides(name) for name in K.LAYER_ENTRY_POINTS)

    @property
    def has_split_layers(self) -> bool:
        """layer_interaction in two halves (layer_messages, layer_update): each pair computed on one rank."""
        return self.has_layers and all(self.provides(name) for name in K.SPLIT_LAYER_ENTRY_POINTS)

    @property
    def has_variances(self) -> bool:
        """An aleatoric head: atomic_variances() gives each atom's predicted energy variance."""
        return self.provides(K.ENTRY_ATOMIC_VARIANCES)

    @property
    def has_local_graph(self) -> bool:
        """local_energies: the short-range energies on a graph the engine built (LAMMPS, OpenMM engine PME)."""
        return self.provides(K.ENTRY_LOCAL_ENERGIES)

    @property
    def has_local_dispersion(self) -> bool:
        """Its D3 runs on an engine's graph (local_dispersion, local_dispersion_tail): LAMMPS evaluates the
        model's own D3 inside pair_style mlmd. With the three-body (ATM) term also local_dispersion_atm and the
        split at the coordination numbers (the triples read every node's CN); files packaged before these entries
        keep LAMMPS's dispersion/d3 route (two-body only: an ATM file then does not run in LAMMPS)."""
        d = self.long_range.dispersion
        if d is None or not (self.provides(K.ENTRY_LOCAL_DISPERSION) and self.provides(K.ENTRY_LOCAL_DISPERSION_TAIL)):
            return False
        if d.three_body:
            return all(self.provides(name) for name in (K.ENTRY_LOCAL_DISPERSION_ATM, K.ENTRY_LOCAL_DISPERSION_CN,
                                                        K.ENTRY_LOCAL_DISPERSION_GIVEN_CN))
        return True

    @property
    def has_local_dispersion_cn(self) -> bool:
        """Its graph D3 also splits at the coordination numbers (local_dispersion_cn, local_dispersion_given_cn):
        LAMMPS on several ranks then exchanges the CN of ghost atoms instead of reaching cutoff + cutoff_cn."""
        return (self.has_local_dispersion and self.provides(K.ENTRY_LOCAL_DISPERSION_CN)
                and self.provides(K.ENTRY_LOCAL_DISPERSION_GIVEN_CN))

    @property
    def has_local_charges(self) -> bool:
        """Predicted charges on an engine's graph (local_charges): LAMMPS then sums the model's own Ewald inside
        pair_style mlmd. Files packaged before the entry cannot run there."""
        return self.predicts_charges and self.provides(K.ENTRY_LOCAL_CHARGES)

    @property
    def has_electrostatics(self) -> bool:
        return self.long_range.electrostatics is not None

    @property
    def has_charges(self) -> bool:
        """charges() and compute()'s "charges" (fixed or predicted)."""
        return self.charges_mode != K.CHARGES_NONE

    @property
    def predicts_charges(self) -> bool:
        """Charges predicted at every step (conserving the total charge the entry points take)."""
        return self.charges_mode == K.CHARGES_PREDICTED

    @property
    def takes_total_charge(self) -> bool:
        """The whole-system entry points take total_charge (it matters, and files before predicted charges lack
        the argument, only for predicted charges)."""
        return self.predicts_charges

    @property
    def fixed_charges(self) -> dict[int, float]:
        """Fixed per-element charges {Z: e}; {} for a model without electrostatics or with predicted charges."""
        e = self.long_range.electrostatics
        return dict(e.charges) if e is not None and e.mode == K.CHARGES_FIXED else {}

    @property
    def requires_periodic(self) -> bool:
        """Its in-model electrostatics is Ewald or PME chosen explicitly: it needs a lattice."""
        e = self.long_range.electrostatics
        return e is not None and e.method in K.PERIODIC_ELECTROSTATICS_METHODS

    @property
    def requires_non_periodic(self) -> bool:
        """Its in-model electrostatics is the direct sum: molecules and clusters only."""
        e = self.long_range.electrostatics
        return e is not None and e.method == "direct"

    def check_fixed_charges(self, engine: str, reason: str, instead: str, error: type[Exception] = ValueError,
                            model: str = "") -> None:
        """The one refusal of predicted charges by an engine that holds fixed per-atom charges."""
        if self.predicts_charges:
            raise error(
                f"model {model} predicts its charges (electrostatics mode {self.charges_mode!r}): {engine} supports "
                f"fixed per-element charges only ({reason}). {instead}"
            )

    # ---------------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """The JSON object. Optional fields that are unset (None) are left out, not written as null: readers
        default them to None, and the LAMMPS plugin reads its string fields with a default only when absent."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        out[K.CARD_UNITS] = asdict(self.units)
        out[K.CARD_LONG_RANGE] = self.long_range.to_json()
        out[K.CARD_ELEMENTS] = list(self.elements)
        out[K.CARD_ATOMIC_NUMBERS] = list(self.atomic_numbers)
        out[K.CARD_ENTRY_POINTS] = list(self.entry_points)
        if self.compiled is not None:
            out[K.CARD_COMPILED] = self.compiled.to_json()
        if self.training_domain is not None:
            out[K.CARD_TRAINING_DOMAIN] = self.training_domain.to_json()
        return out

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelCard:
        """A card from its JSON object; an older card's missing fields get their defaults (see the module
        docstring). Types are checked here; consistency by validate()."""
        from ase.data import chemical_symbols

        raw = read_object("(card)", raw)
        for key in (K.CARD_ATOMIC_NUMBERS, K.CARD_R_CUT, K.CARD_N_LAYERS):
            if key not in raw:
                raise field_error(key, "missing")
        numbers = raw[K.CARD_ATOMIC_NUMBERS]
        if not isinstance(numbers, list):
            raise field_error(K.CARD_ATOMIC_NUMBERS, f"expected a list, got {numbers!r}")
        numbers = [read_number(K.CARD_ATOMIC_NUMBERS, z, integer=True) for z in numbers]
        elements = raw.get(K.CARD_ELEMENTS)
        if elements is None:
            elements = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?" for z in numbers]
        if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
            raise field_error(K.CARD_ELEMENTS, f"expected a list of element symbols, got {elements!r}")
        entry_points = raw.get(K.CARD_ENTRY_POINTS) or []
        if not isinstance(entry_points, list) or not all(isinstance(e, str) for e in entry_points):
            raise field_error(K.CARD_ENTRY_POINTS, f"expected a list of method names, got {entry_points!r}")
        epochs = raw.get(K.CARD_EPOCHS)
        if isinstance(epochs, list):
            epochs = [read_number(K.CARD_EPOCHS, e, integer=True) for e in epochs]
        else:
            epochs = read_optional_number(K.CARD_EPOCHS, epochs, integer=True)
        fmt = raw.get(K.CARD_FORMAT_VERSION)
        return cls(
            elements=list(elements),
            atomic_numbers=numbers,
            r_cut=read_number(K.CARD_R_CUT, raw[K.CARD_R_CUT]),
            n_layers=read_number(K.CARD_N_LAYERS, raw[K.CARD_N_LAYERS], integer=True),
            dtype=str(raw.get(K.CARD_DTYPE, "float32")),
            interaction_range=read_number(K.CARD_INTERACTION_RANGE, raw.get(K.CARD_INTERACTION_RANGE, 0.0)),
            format_version=read_number(K.CARD_FORMAT_VERSION, fmt, integer=True),
            mlmd_version=str(raw.get(K.CARD_MLMD_VERSION, "?")),
            created=str(raw.get(K.CARD_CREATED) or ""),
            model_kind=str(raw.get(K.CARD_MODEL_KIND, "equivariant")),
            units=Units.from_json(raw.get(K.CARD_UNITS, asdict(Units()))),
            n_members=read_number(K.CARD_N_MEMBERS, raw.get(K.CARD_N_MEMBERS, 1), integer=True),
            long_range=LongRange.from_json(raw.get(K.CARD_LONG_RANGE)),
            charges_mode=str(raw.get(K.CARD_CHARGES_MODE, K.CHARGES_NONE)),
            min_distance=read_number(K.CARD_MIN_DISTANCE, raw.get(K.CARD_MIN_DISTANCE, DEFAULT_MIN_DISTANCE)),
            entry_points=list(entry_points),
            hparams=read_object(K.CARD_HPARAMS, raw.get(K.CARD_HPARAMS) or {}),
            metrics=read_object(K.CARD_METRICS, raw.get(K.CARD_METRICS) or {}),
            member_metrics=raw.get(K.CARD_MEMBER_METRICS),
            epochs=epochs,
            training_data_sha256=raw.get(K.CARD_TRAINING_DATA_SHA256),
            training_number_density=read_optional_number(K.CARD_TRAINING_NUMBER_DENSITY,
                                                         raw.get(K.CARD_TRAINING_NUMBER_DENSITY)),
            training_domain=domain_from_card_value(raw.get(K.CARD_TRAINING_DOMAIN)),
            weights_sha256=raw.get(K.CARD_WEIGHTS_SHA256),
            compiled=CompiledCard.from_json(raw[K.CARD_COMPILED]) if raw.get(K.CARD_COMPILED) else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        return cls.from_dict(json.loads(text))

    def with_training(self, info: Mapping[str, Any]) -> ModelCard:
        """The card with what the training run records (TRAINING_FIELDS only; anything else is an error)."""
        unknown = sorted(set(info) - set(TRAINING_FIELDS))
        if unknown:
            raise CardError(
                f"model card fields {unknown} cannot be set at packaging: the card takes from the training run only "
                f"{', '.join(TRAINING_FIELDS)} (everything else comes from the model itself)"
            )
        info = dict(info)
        if info.get(K.CARD_TRAINING_DOMAIN) is not None:
            info[K.CARD_TRAINING_DOMAIN] = domain_from_card_value(info[K.CARD_TRAINING_DOMAIN])
        return replace(self, **info)

    # ------------------------------------------------------------------------------------------- checks

    def validate(self) -> ModelCard:
        """Every field well-formed and consistent with the others; a CardError naming the field otherwise."""
        from ase.data import chemical_symbols

        if self.format_version < 1:
            raise field_error(K.CARD_FORMAT_VERSION, f"must be at least 1, got {self.format_version}")
        if not self.atomic_numbers:
            raise field_error(K.CARD_ATOMIC_NUMBERS, "the model knows no element")
        bad = [z for z in self.atomic_numbers if not 0 < z < len(chemical_symbols)]
        if bad:
            raise field_error(K.CARD_ATOMIC_NUMBERS, f"not atomic numbers: {bad}")
        if len(set(self.atomic_numbers)) != len(self.atomic_numbers):
            raise field_error(K.CARD_ATOMIC_NUMBERS, f"repeated elements: {self.atomic_numbers}")
        expected = [chemical_symbols[z] for z in self.atomic_numbers]
        if list(self.elements) != expected:
            raise field_error(K.CARD_ELEMENTS, f"{self.elements} does not match atomic_numbers {self.atomic_numbers} "
                                         f"({expected})")
        if not self.r_cut > 0:
            raise field_error(K.CARD_R_CUT, f"must be positive, got {self.r_cut}")
        if self.n_layers < 1:
            raise field_error(K.CARD_N_LAYERS, f"must be at least 1, got {self.n_layers}")
        if abs(self.interaction_range - self.r_cut * self.n_layers) > 1e-9 * self.interaction_range:
            raise field_error(K.CARD_INTERACTION_RANGE, f"{self.interaction_range} is not n_layers * r_cut = "
                                                  f"{self.r_cut * self.n_layers}")
        if self.dtype not in DTYPES:
            raise field_error(K.CARD_DTYPE, f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.units != Units():
            raise field_error(K.CARD_UNITS, f"mlmd models work in {asdict(Units())}, not {asdict(self.units)}")
        if self.n_members < 1:
            raise field_error(K.CARD_N_MEMBERS, f"must be at least 1, got {self.n_members}")
        if not 0 <= self.min_distance < self.r_cut:
            raise field_error(K.CARD_MIN_DISTANCE, f"must be in [0, r_cut), got {self.min_distance}")
        density = self.training_number_density
        if density is not None and not density > 0:
            raise field_error(K.CARD_TRAINING_NUMBER_DENSITY, f"must be positive, got {density}")
        if self.training_domain is not None:
            self.training_domain.validate(self.elements, self.r_cut)
        self._validate_long_range()
        if self.compiled is not None and not re.fullmatch(r"[0-9a-f]{64}", self.compiled.sha256):
            raise field_error(f"{K.CARD_COMPILED}.sha256", f"not a SHA-256 hex digest: {self.compiled.sha256!r}")
        for key in (K.CARD_WEIGHTS_SHA256, K.CARD_TRAINING_DATA_SHA256):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and _SHA256.fullmatch(value)):
                raise field_error(key, f"not a SHA-256 hex digest: {value!r}")
        return self

    def _validate_long_range(self) -> None:
        if self.charges_mode not in K.CHARGES_MODES:
            raise field_error(K.CARD_CHARGES_MODE, f"must be one of {K.CHARGES_MODES}, got {self.charges_mode!r}")
        d = self.long_range.dispersion
        if d is not None and d.units != {"length": LENGTH_UNIT, "energy": ENERGY_UNIT}:
            raise field_error(f"{K.CARD_LONG_RANGE}.{K.LONG_RANGE_DISPERSION}.units", f"got {d.units}")
        if d is not None and not (d.cutoff > 0 and d.cutoff_cn > 0):  # the ghost reach of LAMMPS's D3 on the graph
            raise field_error(f"{K.CARD_LONG_RANGE}.{K.LONG_RANGE_DISPERSION}",
                              f"cutoff {d.cutoff} Å and cutoff_cn {d.cutoff_cn} Å (both must be positive)")
        e = self.long_range.electrostatics
        mode = K.CHARGES_NONE if e is None else e.mode
        if self.charges_mode != mode:
            raise field_error(K.CARD_CHARGES_MODE,
                              f"{self.charges_mode!r}, but long_range.electrostatics says {mode!r}")
        if e is None:
            return
        name = f"{K.CARD_LONG_RANGE}.{K.LONG_RANGE_ELECTROSTATICS}"
        if e.method not in K.ELECTROSTATICS_METHODS:
            raise field_error(f"{name}.method", f"must be one of {K.ELECTROSTATICS_METHODS}, got {e.method!r}")
        if e.mode == K.CHARGES_FIXED:
            missing = [z for z in self.atomic_numbers if z not in e.charges]
            if missing:
                raise field_error(f"{name}.charges", f"no fixed charge for Z={missing}")
        if not e.accuracy > 0:
            raise field_error(f"{name}.accuracy", f"must be positive, got {e.accuracy}")
        if e.units != asdict(Units()):
            raise field_error(f"{name}.units", f"must be {asdict(Units())}, got {e.units}")
