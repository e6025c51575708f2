"""The compiled (AOTInductor) copy of a packaged model: the same function as the TorchScript file, and engines
that fall back to the TorchScript file whenever the copy cannot be used.

Tests marked aoti compile one small float64 model (a minute or two); the others fake the compiler's output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list

from conftest import make_potential, water_box
from mlmd.deploy.card_parts import CompiledCard, CompiledLayersCard
from mlmd.deploy.compiled import AOTI, file_sha256
from mlmd.deploy.export import compiled_path, package
from mlmd.deploy.load import load_model
from mlmd.engines.ase import MLMDCalculator


@pytest.fixture(scope="module")
def compiled_model(compiled_model_file):
    path = compiled_model_file("float64")
    card = load_model(path)[1]
    assert card.compiled is not None and (path.parent / card.compiled.file) == compiled_path(path)
    return path


def _graph(atoms: Atoms, r_cut: float, unpaired: int, paired: bool = True):
    """local_energies' layout: pairs, their reverses, then `unpaired` pairs given one direction only."""
    i, j, d = neighbor_list("ijD", atoms, r_cut)
    sel = i < j
    i, j, d = i[sel], j[sel], d[sel]
    k = len(i) if not paired else unpaired
    pi, pj, pd = i[k:], j[k:], d[k:]
    src = np.concatenate([pi, pj, i[:k]])
    dst = np.concatenate([pj, pi, j[:k]])
    vec = np.concatenate([pd, -pd, d[:k]])
    return torch.tensor(np.stack([src, dst])), torch.tensor(vec), len(pi)


@pytest.mark.aoti
@pytest.mark.parametrize("unpaired, paired", [(0, True), (7, True), (1, True), (0, False)])
def test_compiled_function_is_local_energies_and_its_gradient(compiled_model, unpaired, paired):
    """All pairs (no rest: padded), pairs and unpaired edges (one unpaired: padded), no pairs at all (padded)."""
    from mlmd.deploy.compiled import CompiledModel, usable

    module, card = load_model(compiled_model)
    path, why = usable(card.compiled, compiled_model)
    assert path is not None, why
    compiled = CompiledModel(path, card.r_cut, torch.float64)
    atoms = water_box(2, seed=3)
    species = module.species_of(torch.tensor(atoms.numbers))
    edge_index, vectors, n_pairs = _graph(atoms, card.r_cut, unpaired, paired)
    v = vectors.clone().requires_grad_(True)
    ref = module.local_energies(species, edge_index, v, len(atoms), n_pairs)
    (ref_grad,) = torch.autograd.grad(ref.sum(), [v])
    energies, grad = compiled.evaluate(species, edge_index, vectors, n_pairs)
    assert energies.shape == ref.shape and grad.shape == ref_grad.shape
    assert float(ref_grad.abs().max()) > 1e-3  # a graph whose forces are not all zero
    torch.testing.assert_close(energies, ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.aoti
def test_ase_compiled_matches_torchscript_and_finite_differences(compiled_model):
    compiled = MLMDCalculator(compiled_model)
    scripted = MLMDCalculator(compiled_model, compiled=False)
    assert compiled.compiled is not None and scripted.compiled is None
    small = water_box(1, seed=1)  # 3.1 Å box, r_cut 3.5 Å: atoms see their own images
    cases = [water_box(2, seed=0), small, molecule("H2O"), Atoms("O", positions=[[0, 0, 0]])]
    for atoms in cases:
        props = ["energy", "forces", "energies"] + (["stress"] if atoms.pbc.all() else [])
        results = []
        for calc in (scripted, compiled):
            calc.reset()
            calc.calculate(atoms.copy(), props)
            results.append(dict(calc.results))
        for key in props:
            np.testing.assert_allclose(results[1][key], results[0][key], rtol=0, atol=1e-9, err_msg=key)
    # forces and stress against finite differences of the compiled energy (independent of autograd)
    atoms = small.copy()
    atoms.calc = compiled
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)
    h = 1e-5
    for a, c in [(0, 0), (1, 2), (2, 1)]:
        e = []
        for s in (h, -h):
            moved = atoms.copy()
            moved.positions[a, c] += s
            moved.calc = compiled
            e.append(moved.get_potential_energy())
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[a, c]) < 1e-6
    e = []
    for s in (h, -h):
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ (np.eye(3) + s * np.eye(3)[[0]].T @ np.eye(3)[[0]]), scale_atoms=True)
        strained.calc = compiled
        e.append(strained.get_potential_energy())
    assert abs((e[0] - e[1]) / (2 * h) / atoms.get_volume() - stress[0, 0]) < 1e-6


def _fake_compiler(monkeypatch, torch_version: str = torch.__version__):
    """package(compile="aoti") without compiling: placeholder files, recorded as the compiler would."""
    import mlmd.deploy.compiled as compiled
    import mlmd.deploy.compiled_layers as compiled_layers

    def fake(potential, out, threads=1):
        out.write_bytes(b"placeholder")
        return CompiledCard(kind=AOTI, file=out.name, sha256=file_sha256(out), torch_version=torch_version,
                            threads=threads)

    def fake_layers(potential, out, threads=1):
        out.write_bytes(b"layers placeholder")
        return CompiledLayersCard(file=out.name, sha256=file_sha256(out))

    monkeypatch.setattr(compiled, "compile_aoti", fake)
    monkeypatch.setattr(compiled_layers, "compile_layers", fake_layers)


def test_calculator_falls_back_to_torchscript_when_the_copy_is_unusable(tmp_path, monkeypatch):
    _fake_compiler(monkeypatch, torch_version="0.0.1")
    path = tmp_path / "m.pt"
    card = package(make_potential(dtype=torch.float64), path, compile=AOTI)
    assert load_model(path)[1].compiled == card.compiled and compiled_path(path).is_file()
    with pytest.warns(UserWarning, match="running the TorchScript model, not the compiled copy: compiled copy made "
                                         "by torch 0.0.1"):
        calc = MLMDCalculator(path)
    assert calc.compiled is None
    atoms = water_box(2)
    calc.calculate(atoms, ["forces"])
    scripted = MLMDCalculator(path, compiled=False)
    scripted.calculate(atoms, ["forces"])
    np.testing.assert_array_equal(calc.results["forces"], scripted.results["forces"])
    with pytest.raises(ValueError, match="cannot run its compiled copy: compiled copy made by torch 0.0.1"):
        MLMDCalculator(path, compiled=True)
    monkeypatch.undo()
    _fake_compiler(monkeypatch)
    package(make_potential(dtype=torch.float64), path, compile=AOTI)
    compiled_path(path).write_bytes(b"another file")
    with pytest.raises(ValueError, match="is not the one packaged with the model"):
        MLMDCalculator(path, compiled=True)
    compiled_path(path).unlink()
    with pytest.warns(UserWarning, match="is missing"):
        assert MLMDCalculator(path).compiled is None
    package(make_potential(dtype=torch.float64), path, compile=AOTI)
    with pytest.raises(ValueError, match="it computes in float64, not torch.float32"):
        MLMDCalculator(path, dtype="float32", compiled=True)


def test_package_compiles_single_short_range_models_only(tmp_path, monkeypatch):
    from mlmd.model.ensemble import EnsemblePotential

    _fake_compiler(monkeypatch)
    committee = EnsemblePotential([make_potential(seed=0), make_potential(seed=1)])
    with pytest.raises(ValueError, match="cannot compile this model: only single equivariant models"):
        package(committee, tmp_path / "c.pt", compile=AOTI)
    with pytest.raises(ValueError, match="unknown compile kind 'xla'"):
        package(make_potential(), tmp_path / "m.pt", compile="xla")
    with pytest.raises(ValueError, match="must be in the folder of the model file"):
        package(make_potential(), tmp_path / "m.pt", compile=AOTI, compiled_to=tmp_path / "sub" / "m.pt2")
    assert not list(tmp_path.iterdir())


def test_cli_package_compile_records_the_copy(tmp_path, monkeypatch, model_files, capsys):
    from mlmd.cli import main

    _fake_compiler(monkeypatch)
    out = tmp_path / "again.pt"
    assert main(["package", str(model_files["float64"]), "-o", str(out), "--compile", "aoti", "--no-validate"]) == 0
    printed = capsys.readouterr().out
    assert "compiled copy   again.aoti.pt2 (aoti, torch" in printed
    assert "layer programs  again.aoti.layers.pt2" in printed
    card = load_model(out)[1]
    assert card.compiled is not None and card.compiled.file == "again.aoti.pt2"
    assert card.compiled.sha256 == file_sha256(tmp_path / "again.aoti.pt2")
    layers = tmp_path / "again.aoti.layers.pt2"
    assert card.compiled.layers == CompiledLayersCard(layers.name, file_sha256(layers))


def _lammps_reference(atoms: Atoms, model) -> dict:
    a = atoms.copy()
    a.calc = MLMDCalculator(model, compiled=False)
    out = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "energies": a.get_potential_energies()}
    if a.pbc.all():
        out["stress"] = a.get_stress()
    return out


@pytest.mark.aoti
@pytest.mark.lammps
def test_lammps_runs_the_compiled_copy_and_matches_torchscript(compiled_model, tmp_path, monkeypatch):
    """The periodic graph on one rank (all edges paired; a cell smaller than the cutoff; a cluster) and a halo
    (`parallel halo`: ghosts not folded, their edges unpaired), against the TorchScript model in ASE;
    MLMD_COMPILED=0 opts out. In process: a `lmp` subprocess loads the plugin its entry point names."""
    from mlmd.engines import lammps as L
    from mlmd.engines.lammps.inputs import pair_lines

    box = water_box(2, seed=1)
    cluster = water_box(2, seed=2)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    for k, atoms in enumerate([box, water_box(1, seed=4), cluster]):
        ref = _lammps_reference(atoms, compiled_model)
        res = L.compute(atoms, compiled_model, workdir=tmp_path / str(k))
        assert "one-call evaluations run the compiled copy (m.aoti.pt2, AOTInductor)" in res.log
        assert abs(res.energy - ref["energy"]) < 1e-10
        np.testing.assert_allclose(res.energies, ref["energies"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-10)
        if "stress" in ref:
            np.testing.assert_allclose(res.stress, ref["stress"], rtol=0, atol=1e-11)
    lines = pair_lines(compiled_model, periodic=True)
    lines[0] += " parallel halo"
    big = water_box(3, seed=5)
    ref = _lammps_reference(big, compiled_model)
    halo = L.compute(big, compiled_model, pair_lines_override=lines, workdir=tmp_path / "halo")
    assert "parallel halo: one call on a halo" in halo.log and "run the compiled copy" in halo.log
    np.testing.assert_allclose(halo.forces, ref["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(halo.energies, ref["energies"], rtol=0, atol=1e-10)
    monkeypatch.setenv("MLMD_COMPILED", "0")
    scripted = L.compute(box, compiled_model, workdir=tmp_path / "ts")
    assert "running the TorchScript model, not the compiled copy: MLMD_COMPILED=0" in scripted.log


@pytest.mark.aoti
@pytest.mark.lammps
def test_validate_compares_the_compiled_copy_with_the_torchscript_model(compiled_model):
    from mlmd.validate import validate

    report = validate(compiled_model, nprocs=(1, 2), engine_names=["ase", "lammps"])
    notes: dict[str, set] = {}
    for row in report.rows:
        notes.setdefault(row.engine, set()).add(row.note)
    # one rank runs the one-call program, two ranks the layer programs (parallel layers)
    assert notes == {"ase compiled": {""}, "lammps 1 rank": {"compiled"}, "lammps 2 ranks": {"compiled layers"}}, notes
    assert report.passed, report.table()
