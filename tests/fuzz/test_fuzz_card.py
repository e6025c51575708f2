"""Fuzzed edits of a packaged model's card (hypothesis): the fields both mlmd's Python loader and the LAMMPS plugin
read, set to a value of the right type but wrong, a value of another type, null, removed, or beside an extra key.
The plugin must accept exactly when load_model does; a refusal names the field on the first line in both; an
accepted card gives the energy the ASE calculator gives (so no edit is taken silently with another number).

The inputs run in the LAMMPS worker of test_fuzz_lammps.py (one lmp process, many inputs). MLMD_FUZZ_EXAMPLES
sets the number of cases.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz_lammps import Worker

from conftest import CARD_NULL, water_box, with_card_changes

pytestmark = pytest.mark.lammps

N_EXAMPLES = int(os.environ.get("MLMD_FUZZ_EXAMPLES", "30"))
REMOVE = None  # with_card_changes: None removes the key

# values of any type, including those JSON writes as NaN/Infinity and numbers beyond 64 bits or a double
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10), st.integers(), st.floats(), st.text(max_size=6),
    st.sampled_from([10**400, 2**64 + 1, -(2**63) - 1, 5e-324, 1e308, -0.0, "NaN", "1", "float64", "H"]),
    st.lists(st.integers(-1, 9) | st.text(max_size=2), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers() | st.floats() | st.none(), max_size=2),
)
# per field: values of the right type, some right and most wrong (the interesting near misses)
NEAR = {
    "r_cut": st.sampled_from([3.5, 3.5 * (1 + 1e-13), 3.5000001, 4.0, 3, 0.0, -3.5, 1e-300, 1e300]),
    "n_layers": st.sampled_from([2, 1, 3, 0, -1, 2.0]),
    "interaction_range": st.sampled_from([7.0, 7, 0.0, 7.000001, 8.0, -7.0]),
    "elements": st.sampled_from([["H", "O"], ["O", "H"], ["H", "C"], ["H"], ["H", "O", "O"], ["h", "O"], ["X", "O"],
                                 [], ["H", "O", "C"]]),
    "atomic_numbers": st.sampled_from([[1, 8], [8, 1], [1, 6], [1], [1, 8, 8], [0, 8], [1, 119], [1.0, 8], [],
                                       [True, 8]]),
    "dtype": st.sampled_from(["float64", "float32", "float16", "Float64", ""]),
    "n_members": st.sampled_from([1, 2, 0, -1, 1.0]),
    "min_distance": st.sampled_from([0.1, 0.0, 0.5, 3.49, 3.5, -0.1, 0]),
    "format_version": st.sampled_from([1, 0, 2, 1.0, True, -1]),
    "charges_mode": st.sampled_from(["none", "fixed", "predicted", "None", ""]),
    "mlmd_version": st.sampled_from(["0.1.0", "99.0", ""]),
    "units": st.sampled_from([{"length": "angstrom", "energy": "eV", "charge": "e"}, {"length": "Å"}, {},
                              {"length": "nm"}, {"energy": "kcal/mol"}, {"time": "ps"}, {"charge": 1}]),
    "training_number_density": st.sampled_from([0.1, 0.0, -0.1]),
    "epochs": st.sampled_from([5, [1, 2], [1.5], -1]),
    "hparams": st.sampled_from([{}, {"r_cut": 3.5}, [], [1]]),
}


@st.composite
def entry_points(draw, listed: list[str]):
    kind = draw(st.sampled_from(["same", "shuffled", "drop", "add", "empty"]))
    if kind == "shuffled":
        return draw(st.permutations(listed))
    if kind == "drop":
        return [e for e in listed if e != draw(st.sampled_from(listed))]
    if kind == "add":
        return [*listed, draw(st.sampled_from(["bogus", "r_cut", "uncertainty", "local_energies"]))]
    return [] if kind == "empty" else list(listed)


@st.composite
def electrostatics(draw):
    block = {"mode": draw(st.sampled_from(["fixed", "fixed", "predicted", "none", 5])),
             "method": draw(st.sampled_from(["auto", "PME", "ewald", "direct", "fft"])),
             "charges": draw(st.sampled_from([{"1": 0.4, "8": -0.8}, {"H": 0.4, "O": -0.8}, {"1": 0.4},
                                              {"08": -0.8, "001": 0.4}, {"Hx": 1.0}, {"1": "x", "8": 0}, {}])),
             "units": draw(st.sampled_from([{"length": "angstrom", "energy": "eV", "charge": "e"},
                                            {"length": "Å", "energy": "eV", "charge": "e"}, {"length": "angstrom"}]))}
    for key, values in (("accuracy", [1e-4, 0.0, -1.0, "x"]), ("ewald_max_atoms", [0, 500, 1.5, None]),
                        ("r_cut", [8.0, None, "8"]), ("smearing", [2.0, "x"]), ("neutralizing_background",
                                                                                  [False, "no", 1])):
        if draw(st.booleans()):
            block[key] = draw(st.sampled_from(values))
    if draw(st.integers(0, 4)) == 0:
        block[draw(st.sampled_from(sorted(block)))] = draw(ANY)
    return block


@st.composite
def dispersion(draw):
    block = {"kind": "d3bj", "functional": "gfn2", "s6": 1.0, "s8": 2.7, "a1": 0.52, "a2": 5.0,
             "units": {"length": "angstrom", "energy": "eV"}}
    for key, values in (("cutoff", [7.0, 0.0, -1.0]), ("cutoff_cn", [7.0, 12.0, 0.0]),
                        ("three_body", [False, True, 0, "no"]), ("tail_correction", [False, True, ""])):
        if draw(st.integers(0, 3)):
            block[key] = draw(st.sampled_from(values))
    if draw(st.integers(0, 3)) == 0:
        block[draw(st.sampled_from(sorted(block)))] = draw(ANY)
    return block


FIELDS = [*NEAR, "entry_points", "weights_sha256", "long_range", "bogus"]
# words a refusal may name the field by (the checksum and the format version have messages of their own)
ALIASES = {"weights_sha256": ("weights_sha256", "checksum"), "format_version": ("format_version", "model format"),
           "long_range": ("long_range", "charges_mode")}


@st.composite
def card_edit(draw, card: dict) -> tuple[str, object]:
    """One field and its new value (REMOVE: taken out, CARD_NULL: null)."""
    field = draw(st.sampled_from(FIELDS))
    how = draw(st.sampled_from(["near", "near", "near", "any", "null", "remove"]))
    if how == "remove":
        return field, REMOVE
    if how == "null":
        return field, CARD_NULL
    if how == "any" or field == "bogus":
        return field, draw(ANY)
    if field == "entry_points":
        return field, draw(entry_points(card["entry_points"]))
    if field == "weights_sha256":
        good = card["weights_sha256"]
        k = draw(st.integers(0, 63))
        return field, draw(st.sampled_from([good, good.upper(), good[:63], good[:k] + ("0" if good[k] != "0" else "1")
                                            + good[k + 1:], f"{good}+{good}", good + " "]))
    if field == "long_range":
        lr = {"electrostatics": draw(st.none() | electrostatics()), "dispersion": draw(st.none() | dispersion())}
        if draw(st.integers(0, 5)) == 0:
            lr[draw(st.sampled_from(["magnetism", "dispersion"]))] = draw(ANY)
        return field, lr
    return field, draw(NEAR[field])


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_files) -> dict:
    from mlmd.deploy.load import load_model
    from mlmd.engines import lammps as L
    from mlmd.engines.ase import MLMDCalculator

    d = tmp_path_factory.mktemp("edit")
    atoms = water_box(1, seed=0)
    L.write_data(atoms, d / "data.lmp", ["H", "O"])  # types 1 = H, 2 = O
    good = model_files["float64"]
    load_model(good)
    extra = {"mlmd_metadata.json": ""}
    import torch

    torch.jit.load(str(good), _extra_files=extra)
    atoms.calc = MLMDCalculator(good)
    return {"dir": d, "data": d / "data.lmp", "good": good, "card": json.loads(extra["mlmd_metadata.json"]),
            "energy": atoms.get_potential_energy()}


def _names(first_line: str, fields: list[str]) -> bool:
    return any(word in first_line for f in fields for word in ALIASES.get(f, (f,)))


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_card_edits_accepted_or_refused_as_in_python(worker, setup, data):
    from mlmd.deploy.load import ModelFileError, load_model
    from mlmd.engines.ase import MLMDCalculator

    edits = dict(data.draw(st.lists(card_edit(setup["card"]), min_size=1, max_size=2)))
    if "long_range" in edits and isinstance(edits["long_range"], dict) and data.draw(st.booleans()):
        e = edits["long_range"].get("electrostatics")  # often the charges mode that goes with the block
        edits.setdefault("charges_mode", e.get("mode", "fixed") if isinstance(e, dict) else "none")
    path = with_card_changes(setup["good"], setup["dir"] / "m.pt", **edits)
    shown = {k: ("null" if v is CARD_NULL else "(removed)" if v is REMOVE else v) for k, v in edits.items()}
    try:
        load_model(path)
        python_ok = True
    except ModelFileError as err:  # anything else (TypeError, OverflowError...) is a bug of the loader
        python_ok = False
        assert _names(str(err).strip().splitlines()[0], list(edits)), (shown, str(err))
    head = ["units metal", "atom_style atomic", "atom_modify map array", "newton on", f"read_data {setup['data']}"]
    reply = worker.run([*head, f"pair_style mlmd {path}", "pair_coeff * * H O", "run 0"])
    # a card may list fewer entry points than its module has (as files packaged before an entry do): LAMMPS, which
    # needs local_energies, then refuses what Python loads, naming the field; every other card alike in both
    listed = edits.get("entry_points", setup["card"]["entry_points"])
    if listed is not REMOVE and "local_energies" not in (listed if isinstance(listed, list) else []) and python_ok:
        assert not reply["ok"] and "entry_points" in reply["error"].strip().splitlines()[0], (shown, reply)
        return
    assert reply["ok"] == python_ok, (shown, reply)
    event(f"{'accepted' if python_ok else 'refused'}: {'+'.join(sorted(edits))}")  # --hypothesis-show-statistics
    if reply["ok"]:  # the energy of the unedited model: an accepted edit changes nothing the model computes
        assert math.isclose(reply["energy"], setup["energy"], rel_tol=1e-9, abs_tol=1e-9), (shown, reply)
        atoms = water_box(1, seed=0)  # the ASE calculator (OpenMM loads through load_model too) takes it alike
        atoms.calc = MLMDCalculator(path)
        assert math.isclose(atoms.get_potential_energy(), setup["energy"], rel_tol=1e-9, abs_tol=1e-9), shown
    else:
        first = reply["error"].strip().splitlines()[0]
        assert _names(first, list(edits)) and len(first) < 2000, (shown, first)


# ------------------------------------------------------------------ cases the fuzzing found (plain regressions)


def _both(worker, setup, **edits) -> tuple[str, str]:
    """load_model's message and LAMMPS's first line for a card with these edits (both must refuse)."""
    from mlmd.deploy.load import ModelFileError, load_model

    path = with_card_changes(setup["good"], setup["dir"] / "r.pt", **edits)
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    head = ["units metal", "atom_style atomic", "atom_modify map array", "newton on", f"read_data {setup['data']}"]
    reply = worker.run([*head, f"pair_style mlmd {path}", "pair_coeff * * H O", "run 0"])
    assert not reply["ok"], reply
    return str(err.value), reply["error"].strip().splitlines()[0]


def test_cards_that_python_refused_and_the_plugin_ran(worker, setup):
    """Each ran in LAMMPS before the plugin read the card with Python's rules (integers that are floats or
    booleans, fields of the wrong type that the plugin skipped, NaN in the JSON naming no field)."""
    cases = [
        ("n_members", True), ("format_version", 1.0), ("min_distance", "0.1"), ("min_distance", -0.1),
        ("entry_points", "forward"), ("long_range", "ewald"), ("hparams", [1]), ("epochs", 1.5), ("r_cut", math.nan),
        ("units", {"length": "nm"}), ("training_number_density", 0.0),
    ]
    for field, value in cases:
        py, lmp = _both(worker, setup, **{field: value})
        assert f"model card field '{field}'" in py and "model card field" in lmp and field in lmp, (field, py, lmp)


def test_cards_the_plugin_refused_and_python_loaded(worker, setup):
    """Each loaded in Python while LAMMPS refused it (or, min_distance, refused the atoms in `run`): a card that no
    longer describes its module is now refused by both, naming the field."""
    good = setup["card"]["entry_points"]
    lr = {"electrostatics": {"mode": "predicted", "method": "ewald"}, "dispersion": None}
    cases = {"r_cut": {"r_cut": 4.0, "interaction_range": 8.0}, "n_layers": {"n_layers": 3, "interaction_range": 10.5},
             "dtype": {"dtype": "float32"}, "entry_points": {"entry_points": [e for e in good if e != "uncertainty"]
                                                             + ["uncertainty"]},
             "charges_mode": {"charges_mode": "predicted", "long_range": lr}, "min_distance": {"min_distance": 3.49}}
    for field, edits in cases.items():
        py, lmp = _both(worker, setup, **edits)
        assert field in py and field in lmp, (field, py, lmp)


def test_cards_both_accept(worker, setup):
    """Accepted by both, with the energy of the unedited card: NaN, Infinity and integers beyond 64 bits in fields
    nobody reads, an old spelling of the length unit, a card without the fields that have defaults."""
    from mlmd.deploy.load import load_model

    for edits in ({"bogus": math.nan, "metrics": {"val": {"x": math.inf}}, "epochs": 2**70},
                  {"units": {"length": "Å"}, "interaction_range": 0.0, "mlmd_version": 5},
                  {"elements": None, "entry_points": None, "n_members": None, "min_distance": None, "units": None,
                   "long_range": None, "charges_mode": None}):
        path = with_card_changes(setup["good"], setup["dir"] / "a.pt", **edits)
        load_model(path)
        head = ["units metal", "atom_style atomic", "atom_modify map array", "newton on", f"read_data {setup['data']}"]
        reply = worker.run([*head, f"pair_style mlmd {path}", "pair_coeff * * H O", "run 0"])
        assert reply["ok"] and math.isclose(reply["energy"], setup["energy"], rel_tol=1e-9), (edits, reply)


def test_plugin_entry_point_list_is_mlmd_keys():
    """The plugin's copy of mlmd.keys.ENTRY_POINTS (its entry_points check) is the same list."""
    import re

    from conftest import REPO
    from mlmd import keys as K

    text = Path(REPO / "plugins" / "lammps" / "mlmd_model.cpp").read_text()
    block = re.search(r"ENTRY_POINTS\[\] = \{(.*?)\};", text, re.S)
    assert block is not None
    assert tuple(re.findall(r'"(\w+)"', block.group(1))) == K.ENTRY_POINTS
