"""Fuzzed inputs (hypothesis): every malformed extxyz, config or model file ends in a clear error, never a crash."""

import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mlmd.config import ConfigError, config_from_dict, load_config
from mlmd.data.structures import DataError, read_structures
from mlmd.deploy.load import ModelFileError, load_model

FUZZ = settings(max_examples=int(os.environ.get("MLMD_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALID_XYZ = (
    '3\nLattice="5.0 0.0 0.0 0.0 5.0 0.0 0.0 0.0 5.0" Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 '
    'pbc="T T T"\nO 0.0 0.0 0.0 0.1 0.0 0.0\nH 0.96 0.0 0.0 -0.1 0.0 0.0\nH -0.24 0.93 0.0 0.0 0.0 0.0\n'
)


@FUZZ
@given(st.data())
def test_extxyz_mutations(tmp_path, data):
    text = VALID_XYZ
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        pos = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        chunk = data.draw(st.text(alphabet='0123456789.-eE TF"=:\nxyzOH,', max_size=6))
        if kind == "delete":
            text = text[:pos] + text[pos + len(chunk) :]
        elif kind == "insert":
            text = text[:pos] + chunk + text[pos:]
        elif kind == "replace":
            text = text[:pos] + chunk + text[pos + len(chunk) :]
        else:
            text = text[:pos]
    path = tmp_path / "f.xyz"
    path.write_text(text)
    try:
        structs = read_structures(path)
    except DataError as err:
        assert str(err)  # a message, naming the file
        assert str(path) in str(err)
        return
    for s in structs:  # what was accepted must be usable
        assert np.isfinite(s.positions).all()
        assert s.forces is None or s.forces.shape == (s.n_atoms, 3)


scalar = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(), st.none(),
                   st.lists(st.integers(), max_size=2))


@FUZZ
@given(st.dictionaries(st.sampled_from(["data", "model", "train", "output_dir", "bogus"]),
                       st.one_of(scalar, st.dictionaries(st.sampled_from(["r_cut", "epochs", "lr", "path", "l_max",
                                                                          "dtype", "nope"]), scalar, max_size=3)),
                       max_size=4))
def test_config_values(values):
    try:
        cfg = config_from_dict(values)
    except ConfigError as err:
        assert str(err)
        return
    assert cfg.model.r_cut == cfg.model.r_cut  # accepted configs have typed values


@FUZZ
@given(st.text(max_size=60))
def test_config_text(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    try:
        load_config(p)
    except ConfigError as err:
        assert str(err)


@pytest.fixture(scope="module")
def model_bytes(model_files):
    return model_files["float32"].read_bytes()


# no shrinking: each example is a whole model file, and the first failing one is already informative
@settings(max_examples=int(os.environ.get("MLMD_FUZZ_EXAMPLES", "60")) // 3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture], phases=[Phase.explicit, Phase.generate])
@given(st.data())
def test_model_file_corruption(tmp_path, model_bytes, data):
    raw = bytearray(model_bytes)
    mode = data.draw(st.sampled_from(["truncate", "flip"]))
    if mode == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            k = data.draw(st.integers(0, len(raw) - 1))
            raw[k] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(raw))
    try:
        load_model(path)
    except ModelFileError as err:
        assert str(path) in str(err)
        return
    # flips that land in zip padding or unused bytes may leave the model intact: then it must still verify
    m, card = load_model(path)
    assert card.format_version >= 1


def test_yaml_roundtrip_of_defaults(tmp_path):
    from mlmd.config import Config

    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(Config().to_dict()))
    assert load_config(p).to_dict()["model"] == Config().to_dict()["model"]


@settings(max_examples=int(os.environ.get("MLMD_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(close=st.floats(0.0, 1.5), volume=st.lists(st.floats(-1.0, 40.0), min_size=2, max_size=2),
       factors=st.lists(st.floats(0.0, 3.0), min_size=2, max_size=2),
       pairs=st.dictionaries(st.sampled_from(["H-H", "H-O", "O-O"]), st.floats(-1.0, 4.0), max_size=3),
       squeeze=st.floats(0.6, 1.5))
def test_domain_record_edits_in_the_ase_calculator(tmp_path, domain_model, close, volume, factors, pairs, squeeze):
    """An edited training_domain record: refused naming the field, or accepted and then every configuration is
    either silent or warned about once, with a message naming the step (never an exception from inside)."""
    import warnings

    from conftest import water_box, with_card_changes
    from mlmd import keys as K
    from mlmd.engines.ase import MLMDCalculator
    from mlmd.engines.domain import DomainWarning

    record = {"pair_min_distance": pairs, "volume_per_atom": volume, "close_factor": close,
              "volume_factors": factors, "n_structures": 1}
    path = with_card_changes(domain_model, tmp_path / "m.pt", **{K.CARD_TRAINING_DOMAIN: record})
    try:
        load_model(path)
    except ModelFileError as err:
        assert "training_domain" in str(err)
        return
    atoms = water_box(2)
    atoms.set_cell(atoms.cell * squeeze, scale_atoms=True)
    atoms.calc = MLMDCalculator(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            atoms.positions[0] += 0.01
            assert np.isfinite(atoms.get_potential_energy())
    msgs = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert len(msgs) <= 1 and all(m.startswith("ASE MD step ") for m in msgs)
