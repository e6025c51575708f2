"""The model card (mlmd.deploy.card.ModelCard): one typed contract, written by export, read by every engine.

Checked here: the JSON keys are the constants in mlmd.keys; a card survives JSON unchanged; export records the
entry points the scripted file has and the card's capabilities follow from them; older (format 1) cards load
with documented defaults and their entry points taken from the module; bad cards are refused naming the field;
what packaging may take from a training run is typed; deploy needs nothing from the trainer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, make_potential
from mlmd import keys as K
from mlmd.deploy.card import (
    DEFAULT_MIN_DISTANCE,
    CardError,
    CompiledCard,
    ElectrostaticsCard,
    LongRange,
    ModelCard,
    Units,
)
from mlmd.deploy.card_parts import CompiledLayersCard
from mlmd.deploy.domain import TrainingDomain
from mlmd.deploy.export import package
from mlmd.deploy.load import ModelFileError, load_model, read_card

OLD_MODEL = REPO / "tests" / "data" / "model_mlmd_0.1.0.pt"
OLD_HYBRID = REPO / "tests" / "data" / "water_model_hybrid_before_d3_entry.pt"  # packaged before the D3 graph entry
# what pair_mlmd.cpp reads by name: renaming any of these breaks the LAMMPS plugin
CPP_KEYS = ("format_version", "mlmd_version", "weights_sha256", "elements", "r_cut", "n_layers",
            "interaction_range", "dtype", "charges_mode", "training_domain")


COMPILED = CompiledCard(kind="aoti", file="m.aoti.pt2", sha256="2" * 64, torch_version="2.9.0")


def small_card(**changes) -> ModelCard:
    card = ModelCard(elements=["H", "O"], atomic_numbers=[1, 8], r_cut=3.0, n_layers=2, dtype="float64",
                     entry_points=[K.ENTRY_FORWARD, K.ENTRY_COMPUTE, K.ENTRY_LOCAL_ENERGIES])
    return replace(card, **changes)


def fixed_charges(**changes) -> LongRange:
    return LongRange(ElectrostaticsCard(K.CHARGES_FIXED, charges={1: 0.4, 8: -0.8}, **changes))


def test_card_keys_are_the_constants_and_what_the_plugin_reads():
    names = [f.name for f in fields(ModelCard)]
    assert sorted(names) == sorted(K.CARD_KEYS)
    assert set(CPP_KEYS) <= set(names)
    full = small_card(member_metrics=[], epochs=1, training_data_sha256="0" * 64, weights_sha256="1" * 64,
                      training_number_density=0.1, compiled=COMPILED,
                      training_domain=TrainingDomain({"H-O": 1.0}, (9.0, 11.0), 3.0, 5))
    assert set(json.loads(full.to_json())) == set(K.CARD_KEYS)
    assert ModelCard.from_json(full.to_json()) == full
    # unset optional fields are absent, not null (pair_mlmd.cpp takes a default only for an absent string field)
    assert not {K.CARD_WEIGHTS_SHA256, K.CARD_EPOCHS} & set(json.loads(small_card().to_json()))
    assert ModelCard.from_json(small_card().to_json()) == small_card()
    # the layer programs' entry: absent from cards without it (as written before it existed), read back when there
    assert "layers" not in json.loads(full.to_json())[K.CARD_COMPILED]
    layered = small_card(compiled=replace(COMPILED, layers=CompiledLayersCard("m.aoti.layers.pt2", "3" * 64)))
    assert json.loads(layered.to_json())[K.CARD_COMPILED]["layers"] == {
        "file": "m.aoti.layers.pt2", "sha256": "3" * 64, "interface": 1}
    assert ModelCard.from_json(layered.to_json()) == layered


def test_packaged_card_round_trips_and_lists_the_entry_points(model_files):
    module, card = load_model(model_files["float64"])
    assert ModelCard.from_json(card.to_json()) == card
    assert read_card(model_files["float64"]) == card  # from the zip directory, no torch load
    expected = [name for name in K.ENTRY_POINTS if hasattr(module, name)]
    assert card.entry_points == expected
    assert {K.ENTRY_FORWARD, K.ENTRY_COMPUTE, K.ENTRY_LOCAL_ENERGIES, K.ENTRY_SPECIES_OF} <= set(expected)
    assert K.ENTRY_UNCERTAINTY not in expected and K.ENTRY_ATOMIC_VARIANCES not in expected
    assert card.has_local_graph and card.has_layers and not card.has_uncertainty and not card.has_variances
    assert not card.is_committee and not card.has_charges and not card.predicts_charges
    assert card.min_distance == module.min_distance == DEFAULT_MIN_DISTANCE
    assert card.units == Units("angstrom", "eV", "e")
    assert card.interaction_range == card.r_cut * card.n_layers


def test_every_public_method_of_a_packaged_file_is_a_known_entry_point():
    """A method added to mlmd.deploy.packaged must be named in keys.ENTRY_POINTS too, or export leaves it off the
    card and the LAMMPS plugin (which trusts a card's list) never calls it."""
    from mlmd.deploy.export import script_model
    from mlmd.model.ensemble import EnsemblePotential

    for pot in (make_potential(), EnsemblePotential([make_potential(seed=k) for k in range(2)])):
        public = {n for n in script_model(pot)._c._method_names() if not n.startswith("_")}
        assert public <= set(K.ENTRY_POINTS), sorted(public - set(K.ENTRY_POINTS))


def test_old_card_gets_defaults_and_entry_points_from_the_module():
    raw = json.loads(subprocess.run(["unzip", "-p", str(OLD_MODEL), "*/extra/" + K.META_FILE],
                                    check=True, capture_output=True).stdout)
    for key in (K.CARD_ENTRY_POINTS, K.CARD_MIN_DISTANCE, K.CARD_N_MEMBERS):
        assert key not in raw  # written by mlmd 0.1.0, before these fields
    module, card = load_model(OLD_MODEL)
    assert card.n_members == 1 and card.min_distance == 0.1 and card.charges_mode == K.CHARGES_NONE
    assert card.entry_points == [K.ENTRY_FORWARD, K.ENTRY_COMPUTE, K.ENTRY_ATOMIC_ENERGIES, K.ENTRY_SPECIES_OF,
                                 K.ENTRY_LOCAL_ENERGIES]
    assert read_card(OLD_MODEL) == card  # the zip reader falls back to the module for the entry points
    # without the module, an old card says it provides nothing (a reader must not guess)
    assert ModelCard.from_dict(raw).entry_points == []


def test_old_sub_cards_spelling_angstrom_read_as_the_one_spelling():
    raw = json.loads(subprocess.run(["unzip", "-p", str(OLD_HYBRID), "*/extra/" + K.META_FILE],
                                    check=True, capture_output=True).stdout)
    assert raw["long_range"]["electrostatics"]["units"]["length"] == "Å"
    card = read_card(OLD_HYBRID)
    assert card.long_range.electrostatics.units["length"] == "angstrom"
    assert card.long_range.dispersion.units["length"] == "angstrom"
    assert card.fixed_charges.keys() == {1, 8} and card.charges_mode == K.CHARGES_FIXED
    assert not card.requires_periodic and not card.requires_non_periodic  # method "auto"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"r_cut": -1.0, "interaction_range": 1.0}, "'r_cut'"),
        ({"n_layers": 0, "interaction_range": 1.0}, "'n_layers'"),
        ({"elements": ["O", "H"]}, "'elements'"),
        ({"atomic_numbers": [1, 1], "elements": ["H", "H"]}, "'atomic_numbers'"),
        ({"interaction_range": 5.0}, "'interaction_range'"),
        ({"dtype": "float16"}, "'dtype'"),
        ({"units": Units(length="nm")}, "'units'"),
        ({"n_members": 0}, "'n_members'"),
        ({"min_distance": 3.0}, "'min_distance'"),
        ({"charges_mode": "predicted"}, "'charges_mode'"),
        ({"charges_mode": "sometimes"}, "'charges_mode'"),
        ({"long_range": fixed_charges()}, "'charges_mode'"),
        ({"long_range": LongRange(ElectrostaticsCard(K.CHARGES_FIXED, charges={1: 0.4})), "charges_mode": "fixed"},
         "'long_range.electrostatics.charges'"),
        ({"long_range": fixed_charges(method="spme"), "charges_mode": "fixed"}, "'long_range.electrostatics.method'"),
        ({"weights_sha256": "not-a-digest"}, "'weights_sha256'"),
        ({"format_version": 0}, "'format_version'"),
        ({"compiled": replace(COMPILED, sha256="2" * 63)}, "'compiled.sha256'"),
    ],
)
def test_validate_names_the_field(changes, field):
    small_card().validate()
    with pytest.raises(CardError, match=f"model card field {field}"):
        small_card(**changes).validate()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("atomic_numbers"), "'atomic_numbers': missing"),
        (lambda d: d.update(r_cut="3.0"), "'r_cut': expected a finite number"),
        (lambda d: d.update(r_cut=float("nan")), "'r_cut': expected a finite number"),
        (lambda d: d.update(units={"length": "angstrom", "lengtx": "m"}), "'units': unknown quantities"),
        (lambda d: d.update(long_range={"dispersion": {"s6": "1"}}), "'long_range.dispersion.s6'"),
        (lambda d: d.update(n_layers=True), "'n_layers': expected an integer"),
        (lambda d: d.update(entry_points="forward"), "'entry_points': expected a list"),
        (lambda d: d.update(long_range={"electrostatics": None, "magnetism": {"kind": "x"}}), "'long_range'"),
        (lambda d: d.update(long_range={"electrostatics": {"mode": "fixed", "charges": {"Xx": 1.0}}}),
         "'long_range.electrostatics.charges'"),
        (lambda d: d.update(compiled={"kind": "aoti", "file": "m.pt2", "sha256": "2" * 64}),
         "'compiled.torch_version': expected a non-empty string"),
        (lambda d: d.update(compiled={**COMPILED.to_json(), "file": "../m.pt2"}), "'compiled.file'"),
        (lambda d: d.update(compiled={**COMPILED.to_json(), "layers": {"file": "a/l.pt2", "sha256": "3" * 64}}),
         "'compiled.layers.file'"),
        (lambda d: d.update(compiled={**COMPILED.to_json(), "layers": {"file": "l.pt2", "sha256": "3" * 63}}),
         "'compiled.layers.sha256'"),
        (lambda d: d.update(compiled={**COMPILED.to_json(), "layers": {"sha256": "3" * 64}}),
         "'compiled.layers.file': expected a non-empty string"),
    ],
)
def test_reading_names_the_field(edit, field):
    raw = json.loads(small_card().to_json())
    edit(raw)
    with pytest.raises(CardError, match=field):
        ModelCard.from_dict(raw)


def test_a_file_with_an_invalid_card_is_refused(model_files, tmp_path):
    extra = {K.META_FILE: ""}
    module = torch.jit.load(str(model_files["float64"]), _extra_files=extra)
    raw = json.loads(extra[K.META_FILE])
    raw["interaction_range"] = 2 * raw["interaction_range"]
    torch.jit.save(module, str(tmp_path / "bad.pt"), _extra_files={K.META_FILE: json.dumps(raw)})
    with pytest.raises(ModelFileError, match="invalid model card: model card field 'interaction_range'"):
        load_model(tmp_path / "bad.pt")


def test_packaging_takes_only_training_fields(tmp_path):
    pot = make_potential(seed=3)
    with pytest.raises(CardError, match=r"\['r_cut'\] cannot be set at packaging"):
        package(pot, tmp_path / "m.pt", {"r_cut": 9.0})
    with pytest.raises(CardError, match="'training_data_sha256': not a SHA-256"):
        package(pot, tmp_path / "m.pt", {"training_data_sha256": "abc"})
    assert not (tmp_path / "m.pt").exists()
    sha = "0" * 64
    written = package(pot, tmp_path / "m.pt", {"training_data_sha256": sha, "epochs": 3, "metrics": {"val": {}}})
    _, card = load_model(tmp_path / "m.pt")
    assert card == written and card.training_data_sha256 == sha and card.epochs == 3


def test_capabilities_follow_the_card():
    assert small_card(n_members=3, entry_points=[K.ENTRY_UNCERTAINTY]).has_uncertainty
    assert not small_card(n_members=1, entry_points=[K.ENTRY_UNCERTAINTY]).has_uncertainty
    assert small_card(entry_points=[K.ENTRY_LOCAL_ENERGIES_OF_MEMBER]).has_member_entry
    assert small_card(entry_points=[K.ENTRY_ATOMIC_VARIANCES]).has_variances
    assert small_card(entry_points=list(K.LAYER_ENTRY_POINTS)).has_layers
    assert not small_card(entry_points=list(K.LAYER_ENTRY_POINTS[:3])).has_layers
    assert small_card(long_range=fixed_charges(method="ewald"), charges_mode="fixed").requires_periodic
    assert small_card(long_range=fixed_charges(method="direct"), charges_mode="fixed").requires_non_periodic
    fixed = small_card(long_range=fixed_charges(), charges_mode="fixed").validate()
    assert fixed.has_charges and fixed.fixed_charges == {1: 0.4, 8: -0.8} and not fixed.takes_total_charge
    fixed.check_fixed_charges("an engine", "why", "instead")  # fixed charges pass
    predicted = small_card(long_range=LongRange(ElectrostaticsCard(K.CHARGES_PREDICTED)),
                           charges_mode=K.CHARGES_PREDICTED).validate()
    assert predicted.predicts_charges and predicted.takes_total_charge and predicted.fixed_charges == {}
    with pytest.raises(KeyError, match="model m.pt predicts its charges .* an engine supports fixed per-element "
                                       r"charges only \(why\)\. instead"):
        predicted.check_fixed_charges("an engine", "why", "instead", error=KeyError, model="m.pt")


def test_deploy_imports_nothing_from_training_and_load_not_export():
    code = ("import sys, mlmd.deploy.load as L; assert 'mlmd.deploy.export' not in sys.modules\n"
            "import mlmd.deploy.export\n"
            "bad = sorted(m for m in sys.modules if m.startswith('mlmd.train'))\n"
            "assert not bad, bad\n"
            "import mlmd.deploy.card\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    card = subprocess.run([sys.executable, "-c", "import sys, mlmd.deploy.card; print('torch' in sys.modules)"],
                          check=True, cwd=REPO, capture_output=True, text=True)
    assert card.stdout.strip() == "False"  # the LAMMPS engine reads cards at every lmp start


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_bad_value_is_a_card_error(data):
    """Whatever a field holds (a corrupt or hand-edited card), reading and validating either succeed or raise a
    CardError naming a field: never a TypeError or KeyError from deep inside."""
    domain = TrainingDomain({"H-H": 1.5, "H-O": 0.9}, (9.0, 11.0), 3.0, 5)
    raw = json.loads(small_card(long_range=fixed_charges(), charges_mode="fixed", training_domain=domain).to_json())
    target = raw
    key = data.draw(st.sampled_from(sorted(raw)))
    if key == K.CARD_LONG_RANGE and data.draw(st.booleans()):
        target = raw[key]["electrostatics"]
        key = data.draw(st.sampled_from(sorted(target)))
    elif key == K.CARD_TRAINING_DOMAIN and data.draw(st.booleans()):  # an edit inside the record
        target = raw[key]
        if data.draw(st.booleans()):
            target = target["pair_min_distance"]
            key = data.draw(st.sampled_from(["H-H", "H-O", "O-H", "O-O", "H-C", "", "H-O-H"]))
        else:
            key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(JSON_VALUES)
    try:
        ModelCard.from_dict(raw).validate()
    except CardError as err:
        assert str(err).startswith("model card field '")
