"""`mlmd validate`: passes on a packaged model, fails (exit 1) when an engine runs a different model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import mlmd.validate as V
import mlmd.validate_structures as S
from conftest import make_potential
from mlmd import keys as K
from mlmd.cli import main
from mlmd.deploy.card import CardError, ElectrostaticsCard, LongRange, ModelCard
from mlmd.deploy.export import package

pytestmark = [pytest.mark.lammps, pytest.mark.openmm]


def test_validate_passes(model_files, capsys):
    assert main(["validate", str(model_files["float64"])]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out
    for engine in ("openmm", "lammps 1 rank", "lammps 2 ranks", "lammps 4 ranks"):
        for structure in ("water box 27 molecules", "water box 64 molecules", "water cluster 8 molecules"):
            assert any(line.startswith(engine) and structure in line and line.endswith(" ok")
                       for line in out.splitlines()), (engine, structure)


def test_validate_fails_when_an_engine_differs(model_files, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other.pt"
    package(make_potential(seed=1), other)  # same architecture and elements, other weights
    real = V.run_lammps
    monkeypatch.setattr(V, "run_lammps", lambda atoms, model, nprocs=1: real(atoms, other, nprocs))
    assert main(["validate", str(model_files["float64"]), "--engines", "lammps", "--nprocs", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and out.count(" FAIL") == 3


def test_tolerances_follow_dtype_and_long_range(model_files):
    from mlmd.engines.lammps import model_card

    t64, t32 = (V.tolerances(model_card(model_files[k])) for k in ("float64", "float32"))
    assert t64.energy == 1e-9 and t32.energy == 1e-5 and t64.forces_abs == 0.0
    elec = ElectrostaticsCard(K.CHARGES_FIXED, charges={1: 0.4, 8: -0.8}, accuracy=1e-6)
    card = replace(model_card(model_files["float64"]), long_range=LongRange(elec), charges_mode=K.CHARGES_FIXED)
    assert V.tolerances(card.validate()).forces_abs == pytest.approx(1.44e-4, rel=1e-3)


def test_random_configurations_for_other_elements():
    card = ModelCard(elements=["Al", "Cu"], atomic_numbers=[13, 29], r_cut=4.0, n_layers=2, dtype="float64")
    confs = S.configurations(card.validate(), seed=3)
    assert [bool(a.pbc.all()) for _, a in confs] == [True, True, False]
    for _, atoms in confs:
        assert set(atoms.numbers) == {13, 29}
        d = atoms.get_all_distances(mic=bool(atoms.pbc.all()))
        assert d[np.triu_indices(len(atoms), 1)].min() >= 1.5
    assert min(confs[0][1].cell.lengths()) >= 2 * card.r_cut


# ------------------------------------------------------------------------------------------ defaults


def _density(atoms) -> float:
    return len(atoms) / atoms.cell.volume


def test_defaults_have_a_triclinic_cell_at_the_training_density():
    alcu = ModelCard(elements=["Al", "Cu"], atomic_numbers=[13, 29], r_cut=4.0, n_layers=2, dtype="float64")
    water = ModelCard(elements=["H", "O"], atomic_numbers=[1, 8], r_cut=3.5, n_layers=2, dtype="float64")
    for card, rho in [(alcu, S.DEFAULT_DENSITY),  # old cards: as before
                      (replace(alcu, training_number_density=0.085), 0.085),
                      (replace(water, training_number_density=0.09), 0.09)]:
        confs = S.configurations(card.validate(), seed=1)
        periodic = [a for _, a in confs if a.pbc.all()]
        assert len(periodic) == 2 and sum(not a.pbc.any() for _, a in confs) == 1
        cubic, tri = periodic
        np.testing.assert_allclose(cubic.cell.angles(), 90.0)
        assert np.abs(tri.cell.angles() - 90.0).min() > 10.0  # every angle tilted
        assert "triclinic" in confs[1][0]
        for a in periodic:
            assert _density(a) == pytest.approx(rho, rel=0.03)
            assert S.widths(a.cell.array).min() >= 2 * card.r_cut
            d = a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)]
            assert d.min() >= (0.9 if 1 in card.atomic_numbers else 1.5)
    # the card's density is a positive number or absent
    assert S.training_density(alcu) is None
    with pytest.raises(CardError, match="'training_number_density': must be positive"):
        replace(alcu, training_number_density=-1.0).validate()


def test_random_configuration_in_a_triclinic_cell_keeps_minimum_image_distances():
    cell = S.triclinic_cell(6.0)
    a = S.random_configuration([29], 6.0, np.random.default_rng(0), 20, 1.6, cell=cell)
    np.testing.assert_allclose(a.cell.array, cell)
    d = a.get_all_distances(mic=True)  # ASE's minimum image, independent of mlmd's
    assert d[np.triu_indices(len(a), 1)].min() >= 1.6
    assert np.all(a.get_scaled_positions(wrap=False) >= 0) and np.all(a.get_scaled_positions(wrap=False) < 1)


def test_packaged_card_records_the_training_density(tmp_path, emt_data):
    """The card key is written by package_checkpoint from the data the checkpoint was trained on."""
    import ase.io
    import yaml

    from mlmd.config import load_config
    from mlmd.deploy.export import TRAINING_DENSITY_KEY, package_checkpoint, training_data_card
    from mlmd.engines.lammps import model_card
    from mlmd.model.checkpoint import file_sha256
    from mlmd.train.trainer import Trainer

    frames = ase.io.read(emt_data, ":")
    expected = float(np.median([len(a) / a.cell.volume for a in frames]))
    cfg = {"data": {"path": str(emt_data), "val_fraction": 0.2, "test_fraction": 0.0},
           "model": {"r_cut": 4.0, "channels": 4, "vector_channels": 2, "l_max": 1, "n_layers": 1, "n_basis": 4,
                     "radial_hidden": 8, "dtype": "float64"},
           "train": {"epochs": 1, "batch_size": 4}, "output_dir": str(tmp_path / "run")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    Trainer(load_config(tmp_path / "train.yaml"), progress=False).train()
    card = package_checkpoint(tmp_path / "run" / "checkpoint_best.pt", tmp_path / "m.pt")
    assert card.training_number_density == pytest.approx(expected, rel=1e-5)
    assert model_card(tmp_path / "m.pt").training_number_density == card.training_number_density
    # the training domain, from ASE's minimum-image distances (Cu-Cu and Cu-Al pairs are all nearer than half a
    # cell; the two Al atoms of a frame may be further apart than an Al atom and its own image, so <=)
    dom = card.training_domain
    shortest = {"Cu-Cu": np.inf, "Al-Cu": np.inf, "Al-Al": np.inf}
    for a in frames:
        d = a.get_all_distances(mic=True) + np.diag(np.full(len(a), np.inf))
        is_al = np.array(a.get_chemical_symbols()) == "Al"
        for key, (x, y) in {"Cu-Cu": (~is_al, ~is_al), "Al-Cu": (is_al, ~is_al), "Al-Al": (is_al, is_al)}.items():
            shortest[key] = min(shortest[key], d[np.ix_(x, y)].min())
    assert card.elements == ["Al", "Cu"] and dom.n_structures == len(frames)
    assert dom.pair_min_distance["Cu-Cu"] == pytest.approx(shortest["Cu-Cu"], rel=1e-5)
    assert dom.pair_min_distance["Al-Cu"] == pytest.approx(shortest["Al-Cu"], rel=1e-5)
    assert dom.pair_min_distance["Al-Al"] <= shortest["Al-Al"] * (1 + 1e-5)
    volumes = [a.cell.volume / len(a) for a in frames]
    assert dom.volume_per_atom == pytest.approx((min(volumes), max(volumes)), rel=1e-5)
    assert dom.max_force_component == pytest.approx(max(np.abs(a.get_forces()).max() for a in frames), rel=1e-5)
    # non-periodic frames are left out; a changed or missing file gives no key (validate falls back)
    cluster = frames[0].copy()
    cluster.pbc = False
    mixed = tmp_path / "mixed.xyz"
    ase.io.write(mixed, [cluster, *frames[:3]])
    st = {"config": {"data": {"path": str(mixed)}}, "data_sha256": file_sha256(mixed)}
    assert training_data_card(st)[TRAINING_DENSITY_KEY] == pytest.approx(
        np.median([len(a) / a.cell.volume for a in frames[:3]]), rel=1e-5)
    assert training_data_card(dict(st, data_sha256="0" * 64)) == {}
    assert training_data_card({"config": {"data": {"path": str(tmp_path / "gone.xyz")}}, "data_sha256": "x"}) == {}
    assert training_data_card({}) == {}


# ------------------------------------------------------------------------------------------ the user's structures


def _user_files(tmp_path):
    import ase.io
    from ase import Atoms

    from conftest import water_box

    frames = [water_box(2, seed=s) for s in (0, 1, 2)]  # 24 atoms, 6.2 Å cubes: smaller than 2 r_cut
    ase.io.write(tmp_path / "boxes.extxyz", frames)
    mol = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    mol.rotate(40, (1, 1, 0))  # not in a coordinate plane: LAMMPS cannot shrink-wrap a flat box (engine issue)
    ase.io.write(tmp_path / "molecule.xyz", mol)
    # a triclinic cell in no engine's form: a not along x, tilts beyond half the widths
    tri = water_box(2, seed=3, spacing=3.3)
    cell = np.array([[6.6, 0.0, 0.0], [5.0, 6.6, 0.0], [1.0, 4.5, 6.6]])
    tri.set_cell(cell, scale_atoms=True)
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", [20, 35, -10], degrees=True).as_matrix()
    tri.set_cell(tri.cell.array @ rot.T, scale_atoms=True)
    ase.io.write(tmp_path / "tri.cif", tri)
    return frames, mol, tri


def test_engine_ready_keeps_the_structure(model_files, tmp_path):
    """Rotation, replication to twice the cutoff and lattice reduction change nothing physical: the ASE energy
    is the original's times the number of copies (an independent check: the calculator on the raw cell)."""
    from mlmd.engines.ase import MLMDCalculator

    _, _, tri = _user_files(tmp_path)
    ready, note = S.engine_ready(tri, S.minimum_image_width(3.5))
    cell = ready.cell.array
    assert cell[0, 1] == cell[0, 2] == cell[1, 2] == 0.0  # lower triangular
    assert cell[0, 0] >= 2 * abs(cell[1, 0]) and cell[0, 0] >= 2 * abs(cell[2, 0]) and cell[1, 1] >= 2 * abs(cell[2, 1])
    assert S.widths(cell).min() >= 7.5 and note
    copies = len(ready) // len(tri)
    assert copies == int(np.prod([int(x) for x in note.split("x")])) > 1
    e = []
    for a in (tri, ready):
        a = a.copy()
        a.calc = MLMDCalculator(model_files["float64"])
        e.append(a.get_potential_energy())
    assert e[1] == pytest.approx(copies * e[0], rel=1e-10)


def test_validate_user_structures(model_files, tmp_path, capsys):
    _user_files(tmp_path)
    args = ["validate", str(model_files["float64"]), "--no-builtin", "--engines", "openmm", "lammps", "--nprocs", "1",
            "--structure", str(tmp_path / "boxes.extxyz@1:"), "--structure", str(tmp_path / "molecule.xyz"),
            "--structure", str(tmp_path / "tri.cif")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "water box" not in out  # only the user's structures
    rows = [line for line in out.splitlines() if line.startswith(("openmm", "lammps"))]
    assert len(rows) == 2 * 4 and all(line.endswith(" ok") for line in rows)
    for name in ("boxes.extxyz[1] x2x2x2", "boxes.extxyz[2] x2x2x2", "molecule.xyz ", "tri.cif x"):
        assert sum(name in line for line in rows) == 2, name
    assert "boxes.extxyz[0]" not in out


def test_validate_checks_user_structures_with_the_builtin_ones(model_files, tmp_path, capsys):
    _user_files(tmp_path)
    assert main(["validate", str(model_files["float32"]), "--engines", "openmm",
                 "--structure", str(tmp_path / "molecule.xyz")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("openmm")]
    assert len(rows) == 4 and "molecule.xyz" in rows[-1] and "triclinic" in rows[1]


def test_validate_refuses_structures_it_cannot_check(model_files, tmp_path, capsys):
    import ase.io
    from ase import Atoms

    _user_files(tmp_path)
    ase.io.write(tmp_path / "cu.xyz", Atoms("Cu2O", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2, 0]]))
    slab = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[8, 8, 8], pbc=[True, True, False])
    ase.io.write(tmp_path / "slab.extxyz", slab)
    (tmp_path / "junk.xyz").write_text("not a structure\n")
    model = str(model_files["float64"])
    for spec, words in [("cu.xyz", "holds Cu, which the model does not know (its elements: H, O)"),
                        ("slab.extxyz", "periodic in some directions only"),
                        ("missing.xyz", "structure file not found"),
                        ("boxes.extxyz@7", "no frame 7 in"),
                        ("boxes.extxyz@x", "is not a frame number or slice"),
                        ("boxes.extxyz@5:", "holds no frame"),
                        ("junk.xyz", "cannot read structure file")]:
        assert main(["validate", model, "--no-builtin", "--structure", str(tmp_path / spec)]) == 2, spec
        assert words in capsys.readouterr().err, spec
    assert main(["validate", model, "--no-builtin"]) == 2
    assert "nothing to validate" in capsys.readouterr().err
