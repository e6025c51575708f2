"""Version policy: a model packaged by an older mlmd loads unchanged, or is refused with a message naming the mlmd
that made it and what to do.

tests/data/model_mlmd_0.1.0.pt was packaged by the v0.1.0 release (git tag v0.1.0) with
tests/data/make_model_0.1.0.py, which also wrote the energies and forces that release computed for two fixed
structures (tests/data/model_mlmd_0.1.0.json): the current code must reproduce them from the old file.
Additions to the packaged-model contract (new entry points, new card fields) keep format_version 1, so this
file must keep loading while the format number stays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import REPO
from mlmd import MODEL_FORMAT_VERSION
from mlmd.deploy.load import ModelFileError, load_model

DATA = REPO / "tests" / "data"
OLD_MODEL = DATA / "model_mlmd_0.1.0.pt"
REFERENCE = json.loads((DATA / "model_mlmd_0.1.0.json").read_text())


def _atoms(name: str) -> Atoms:
    s = REFERENCE["structures"][name]
    return Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])


def _rewrite_card(src: Path, dst: Path, **changes) -> None:
    """A copy of a model archive with its model card changed (as another mlmd version would have written it)."""
    extra = {"mlmd_metadata.json": ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra["mlmd_metadata.json"])
    meta.update(changes)
    torch.jit.save(module, str(dst), _extra_files={"mlmd_metadata.json": json.dumps(meta)})


def test_the_file_is_from_the_previous_release():
    _, card = load_model(OLD_MODEL)  # checksum verified
    assert card.mlmd_version == REFERENCE["mlmd_version"] == "0.1.0"
    assert card.format_version == MODEL_FORMAT_VERSION == 1
    assert OLD_MODEL.stat().st_size < 1_000_000


@pytest.mark.parametrize("name", ["periodic_water", "water_cluster"])
def test_previous_release_model_in_ase(name):
    from mlmd.engines.ase import MLMDCalculator

    ref = REFERENCE["structures"][name]
    atoms = _atoms(name)
    atoms.calc = MLMDCalculator(OLD_MODEL)
    assert abs(atoms.get_potential_energy() - ref["energy"]) < 1e-12 * abs(ref["energy"])
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies(), ref["energies"], rtol=0, atol=1e-12)
    if "stress" in ref:
        np.testing.assert_allclose(atoms.get_stress(), ref["stress"], rtol=0, atol=1e-12)
    assert np.abs(ref["forces"]).max() > 1e-3


@pytest.mark.lammps
def test_previous_release_model_in_lammps():
    from mlmd.engines import lammps as L

    for name in ("periodic_water", "water_cluster"):
        ref = REFERENCE["structures"][name]
        res = L.compute(_atoms(name), OLD_MODEL)
        assert abs(res.energy - ref["energy"]) < 1e-12 * abs(ref["energy"]), name
        np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-11, err_msg=name)


@pytest.mark.openmm
def test_previous_release_model_in_openmm():
    import openmm
    from openmm import unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.units import EV_TO_KJ_PER_MOL

    ref = REFERENCE["structures"]["periodic_water"]  # 6.4 Å box: at least twice the 3 Å cutoff
    top, positions = topology_from_atoms(_atoms("periodic_water"))
    ctx = openmm.Context(MLMDPotential(OLD_MODEL).createSystem(top), openmm.VerletIntegrator(1e-3),
                         openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions)
    st = ctx.getState(getEnergy=True, getForces=True)
    energy = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    forces = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom) / EV_TO_KJ_PER_MOL
    assert abs(energy - ref["energy"]) < 1e-12 * abs(ref["energy"])
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-11)


def test_additional_card_fields_keep_a_file_loadable(tmp_path):
    """What later releases add to a format-1 card (e.g. an ensemble's member count, predicted charges) is
    ignored by readers that do not know it."""
    from mlmd.engines.ase import MLMDCalculator

    dst = tmp_path / "extended.pt"
    _rewrite_card(OLD_MODEL, dst, ensemble={"members": 4, "entry": "local_member_energies"}, charges_mode="none",
                  something_new=[1, 2, 3])
    atoms = _atoms("water_cluster")
    atoms.calc = MLMDCalculator(dst)
    assert abs(atoms.get_potential_energy() - REFERENCE["structures"]["water_cluster"]["energy"]) < 1e-9


@pytest.mark.parametrize(
    "fmt, made_by, message",
    [
        (2, "9.0.0", r"packaged by mlmd 9.0.0 \(model format 2\); this is mlmd .* reads model format 1\. The file is "
                     r"newer than this mlmd: upgrade mlmd to 9.0.0 or later"),
        (0, "0.0.1", r"packaged by mlmd 0.0.1 \(model format 0\); .*Repackage the training checkpoint with this "
                     r"version \(mlmd package CHECKPOINT -o old.pt\), or use mlmd 0.0.1 for this file"),
        ("1", "0.1.0", r"model card has no valid format_version \('1'\): the file is corrupt"),
    ],
)
def test_other_formats_are_refused_with_what_to_do(tmp_path, fmt, made_by, message):
    dst = tmp_path / "old.pt"
    _rewrite_card(OLD_MODEL, dst, format_version=fmt, mlmd_version=made_by)
    with pytest.raises(ModelFileError, match=message):
        load_model(dst)


@pytest.mark.lammps
@pytest.mark.parametrize(
    "fmt, message",
    [
        (2, r"was packaged by mlmd 9.0.0 \(model format 2\), newer than this plugin \(model format 1\): install mlmd "
            r"9.0.0 or later and rebuild the plugin"),
        (0, r"was packaged by mlmd 9.0.0 \(model format 0\); this plugin reads model format 1 only. Repackage its "
            r"training checkpoint with the installed mlmd \(mlmd package CHECKPOINT -o .*\), or run it with mlmd"),
    ],
)
def test_lammps_plugin_refuses_other_formats(tmp_path, fmt, message):
    from mlmd.engines import lammps as L

    dst = tmp_path / "other.pt"
    _rewrite_card(OLD_MODEL, dst, format_version=fmt, mlmd_version="9.0.0")
    L.write_data(_atoms("periodic_water"), tmp_path / "data.lmp", ["H", "O"])
    (tmp_path / "in.other").write_text(f"units metal\natom_style atomic\nread_data data.lmp\npair_style mlmd {dst}\n")
    with pytest.raises(L.LammpsError, match=message):
        L.run_lammps(tmp_path / "in.other", tmp_path)
