"""Bad input gets a clear error that names the problem."""

import shutil

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import water_box
from mlmd.data.structures import DataError, read_structures
from mlmd.deploy.load import ModelFileError, load_model
from mlmd.engines.ase import MLMDCalculator


@pytest.fixture(scope="module")
def calc(model_files):
    return MLMDCalculator(model_files["float64"])


def _energy(atoms, calc):
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_unknown_element(calc):
    atoms = Atoms("OHC", positions=[[0, 0, 0], [1, 0, 0], [0, 1.2, 0]])
    with pytest.raises(ValueError, match=r"element\(s\) C \(atom\(s\) 2\) not in model .*: it knows H, O"):
        _energy(atoms, calc)
    # the packaged model refuses by itself too (any caller, any engine)
    with pytest.raises(Exception, match=r"atomic number 6 is not known to this model"):
        calc.module.compute(torch.as_tensor(atoms.positions), torch.zeros(3, 3, dtype=torch.float64),
                            torch.as_tensor(atoms.numbers), torch.zeros(3, dtype=torch.bool), False)


def test_atoms_too_close(calc):
    with pytest.raises(Exception, match=r"atoms 0 and 1 are .* apart \(closer than 0.100 Å\)"):
        _energy(Atoms("OH", positions=[[0, 0, 0], [0.05, 0, 0]]), calc)
    # also across a periodic boundary
    a = Atoms("OH", positions=[[0.01, 0, 0], [4.97, 0, 0]], cell=np.eye(3) * 5.0, pbc=True)
    with pytest.raises(Exception, match=r"closer than 0.100 Å"):
        _energy(a, calc)


def test_nan_coordinates(calc):
    a = Atoms("OH", positions=[[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(Exception, match="NaN"):
        _energy(a, calc)


def test_periodic_without_cell(calc):
    a = Atoms("OH", positions=[[0, 0, 0], [1, 0, 0]], pbc=True)
    with pytest.raises(ValueError, match="periodic system .* given no cell"):
        _energy(a, calc)


def test_packaged_model_refuses_periodic_without_cell(model_files):
    m, _ = load_model(model_files["float64"])
    with pytest.raises(Exception, match="periodic system given no cell"):
        m(torch.zeros(2, 3, dtype=torch.float64) + torch.tensor([[0.0], [1.0]]), torch.zeros(3, 3, dtype=torch.float64),
          torch.tensor([8, 1]), torch.tensor([True, True, True]))


def test_missing_corrupt_truncated_model(tmp_path, model_files):
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(bad)
    data = model_files["float64"].read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        MLMDCalculator(trunc)


def _rewrite_archive(src, dst, edit_meta=None, edit_weights=False):
    """Copy a model archive, changing its model card or one weight (simulating another version / tampering)."""
    import json

    extra = {"mlmd_metadata.json": ""}
    m = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra["mlmd_metadata.json"])
    if edit_meta:
        edit_meta(meta)
    if edit_weights:
        with torch.no_grad():
            next(iter(m.parameters())).add_(1e-3)
    torch.jit.save(m, str(dst), _extra_files={"mlmd_metadata.json": json.dumps(meta)})


def test_incompatible_version(tmp_path, model_files):
    dst = tmp_path / "old.pt"
    _rewrite_archive(model_files["float64"], dst, edit_meta=lambda m: m.update(format_version=0, mlmd_version="0.0.1"))
    with pytest.raises(ModelFileError, match=r"packaged by mlmd 0.0.1 \(model format 0\).*Repackage"):
        load_model(dst)


def test_tampered_weights(tmp_path, model_files):
    dst = tmp_path / "tampered.pt"
    _rewrite_archive(model_files["float64"], dst, edit_weights=True)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(dst)


def test_not_an_mlmd_model(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelFileError, match="not an mlmd model"):
        load_model(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("3\nnot a comment line\nO 0 0 0\n", "malformed"),
        ("2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3\nO 0 0 0\n", "malformed"),
        ("2\nProperties=species:S:1:pos:R:3 energy=abc\nO 0 0 0\nH 1 0 x\n", "malformed"),
        ("", "malformed|no structures"),
    ],
)
def test_malformed_extxyz(tmp_path, text, match):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_structures(path)


def test_extxyz_with_bad_values(tmp_path):
    import ase.io

    a = water_box(1, 0)
    a.info["energy"] = float("nan")
    ase.io.write(tmp_path / "nan.xyz", a)
    with pytest.raises(DataError, match=r"frame 0: energy 'energy' is not finite"):
        read_structures(tmp_path / "nan.xyz")
    with pytest.raises(DataError, match="data file not found"):
        read_structures(tmp_path / "missing.xyz")


def test_cli_reports_errors_cleanly(tmp_path, model_files):
    import subprocess
    import sys

    from conftest import REPO

    bad = tmp_path / "bad.pt"
    shutil.copy(model_files["float64"], bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    out = subprocess.run([sys.executable, "-m", "mlmd.cli", "info", str(bad)], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2
    assert "corrupt or truncated" in out.stderr and "Traceback" not in out.stderr
