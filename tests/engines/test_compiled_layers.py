"""The compiled layer-by-layer programs (mlmd.deploy.compiled_layers): each program equals the TorchScript layer
entries with autograd, and LAMMPS's `parallel layers` on 2 and 4 ranks runs them and equals the ASE calculator
(float64: 1e-10) and the TorchScript layers (float32: round-off; marked long). Marked aoti: the models are
compiled once per session (conftest.compiled_model_file), a few minutes each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from conftest import water_box
from mlmd.deploy.compiled_layers import load_programs, program_names, usable_layers
from mlmd.deploy.load import load_model
from mlmd.engines.ase import MLMDCalculator

pytestmark = pytest.mark.aoti


def _rank_graph(n_local: int, r_cut: float):
    """A rank's graph as the plugin builds it for parallel layers: the first n_local atoms of a water box are
    local; edges from them within r_cut: pairs of local atoms (i < j) with their reverses, then edges to the
    other atoms' images, which are ghost nodes (one per image), in the programs' blocks."""
    atoms = water_box(2, seed=7)
    atoms.rattle(0.05, seed=2)
    i, j, d, s = neighbor_list("ijDS", atoms, r_cut)
    local = i < n_local
    i, j, d, s = i[local], j[local], d[local], s[local]
    pair = (j < n_local) & (i < j)
    rest = (j >= n_local) | ((j < n_local) & (i == j))  # images of local atoms in their own cell: ghosts too
    ghosts: dict[tuple, int] = {}
    rest_dst = []
    for jj, ss in zip(j[rest], s[rest]):
        ghosts.setdefault((int(jj), *map(int, ss)), n_local + len(ghosts))
        rest_dst.append(ghosts[(int(jj), *map(int, ss))])
    numbers = np.concatenate([atoms.numbers[:n_local], atoms.numbers[[k[0] for k in ghosts]]])
    t = torch.tensor
    return (numbers, t(np.stack([i[pair], j[pair]])), t(d[pair]), t(np.stack([i[rest], rest_dst])), t(d[rest]))


def test_layer_programs_are_the_torchscript_layers_and_their_gradients(compiled_model_file):
    path = compiled_model_file("float64")
    module, card = load_model(path)
    where, why = usable_layers(card.compiled, path)
    assert where is not None, why
    programs = load_programs(where, card.n_layers)
    assert sorted(programs) == sorted(program_names(2)) == ["layer0_backward", "layer0_forward", "layer1_last"]
    n = 9
    numbers, pair_index, pv, rest_index, xv = _rank_graph(n, card.r_cut)
    species = module.species_of(torch.tensor(numbers))
    sl, sg = species[:n], species[n:]
    p = pv.shape[0]
    assert p >= 2 and xv.shape[0] >= 2 and sg.shape[0] >= 2
    edges = (pair_index, pv, -pv, rest_index, xv)
    edge_index = torch.cat([pair_index, pair_index.flip(0), rest_index], 1)
    vectors = torch.cat([pv, -pv, xv]).requires_grad_(True)
    # the TorchScript entries, autograd between them (what the plugin does without the programs)
    sh, radial = module.layer_edges(0, vectors, p)
    h1 = module.layer_interaction(0, 0, module.layer_embed(0, species), species, edge_index, sh, radial, p, n)
    gen = torch.Generator().manual_seed(3)
    h1_ghost = torch.randn(sg.shape[0], h1.shape[1], generator=gen, dtype=torch.float64)  # as exchanged
    h1_all = torch.cat([h1.detach(), h1_ghost]).requires_grad_(True)
    energies = module.layer_readout(0, module.layer_interaction(0, 1, h1_all, species, edge_index, sh, radial, p, n),
                                    sl)
    g_h1, g_v1 = torch.autograd.grad(energies.sum(), [h1_all, vectors], retain_graph=True)
    g_out = torch.randn(h1.shape, generator=gen, dtype=torch.float64)
    (g_v0,) = torch.autograd.grad(h1, [vectors], g_out)

    def close(a, b):
        assert a.shape == b.shape and float(b.abs().max()) > 1e-3  # not all zeros
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)

    forward = programs["layer0_forward"](sl, sg, *edges)  # the features, then what its backward program reads
    assert len(forward) > 1 and card.compiled.layers.interface == 2
    close(forward[0], h1.detach())
    e, gl, gg, gv = programs["layer1_last"](sl, sg, h1.detach(), h1_ghost, *edges)
    close(e, energies.detach())
    close(torch.cat([gl, gg]), g_h1)
    close(gv, g_v1)
    (gv0,) = programs["layer0_backward"](sl, sg, *edges, *forward[1:], g_out)
    close(gv0, g_v0)
    # an edge longer than the cutoff (the plugin's padding) changes nothing and has a zero gradient
    far = torch.tensor([[2.0 * card.r_cut, 0.0, 0.0]], dtype=torch.float64)
    padded = torch.cat([rest_index, torch.zeros(2, 1, dtype=torch.long)], 1)  # node 0 to itself
    e2, gl2, gg2, gv2 = programs["layer1_last"](sl, sg, h1.detach(), h1_ghost, pair_index, pv, -pv, padded,
                                                torch.cat([xv, far]))
    assert torch.equal(e2, e) and torch.equal(gv2[-1], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(gv2[:-1], gv, rtol=0, atol=1e-14)


@pytest.mark.lammps
def test_lammps_parallel_layers_run_the_programs_and_match_ase(compiled_model_file, tmp_path, monkeypatch):
    """float64 on 2 and 4 ranks, and on `processors 4 1 1` in a small box (thin slabs: few local atoms and pairs,
    the programs' padding): energies, forces and stress equal the ASE calculator to 1e-10, per-atom virials the
    TorchScript layers (MLMD_COMPILED=0) on the same ranks."""
    from mlmd.engines import lammps as L

    path = compiled_model_file("float64")
    calc = MLMDCalculator(path, compiled=False)
    big = water_box(3, seed=5)
    big.rattle(0.05, seed=1)
    cases = [(big, 2, ["processors 2 1 1"]), (big, 4, ["processors 2 2 1"]), (water_box(2, seed=9), 4,
                                                                               ["processors 4 1 1"])]
    for k, (atoms, nprocs, grid) in enumerate(cases):
        a = atoms.copy()
        a.calc = calc
        ref = {"energy": a.get_potential_energy(), "energies": a.get_potential_energies(), "forces": a.get_forces(),
               "stress": a.get_stress()}
        monkeypatch.delenv("MLMD_COMPILED", raising=False)
        res = L.compute(atoms, path, nprocs=nprocs, header_lines=grid, workdir=tmp_path / f"c{k}")
        assert "parallel layers" in res.log
        assert "layer-by-layer evaluations run the compiled programs (m.aoti.layers.pt2)" in res.log
        assert abs(res.energy - ref["energy"]) < 1e-10 * abs(ref["energy"])
        np.testing.assert_allclose(res.energies, ref["energies"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.stress, ref["stress"], rtol=0, atol=1e-12)
        monkeypatch.setenv("MLMD_COMPILED", "0")
        scripted = L.compute(atoms, path, nprocs=nprocs, header_lines=grid, workdir=tmp_path / f"s{k}")
        assert "layer-by-layer evaluations run the compiled" not in scripted.log
        np.testing.assert_allclose(res.virial, scripted.virial, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.atom_virials, scripted.atom_virials, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.centroid_virials, scripted.centroid_virials, rtol=0, atol=1e-10)
        assert float(np.abs(res.atom_virials).max()) > 1e-3


@pytest.mark.lammps
@pytest.mark.long
def test_lammps_float32_programs_match_the_torchscript_layers(compiled_model_file, tmp_path, monkeypatch):
    """float32 on 4 ranks: the compiled programs and the TorchScript layers differ by float32 round-off only.
    Marked long: the float32 compile is its own (minutes), shared with no other test; the float64 programs' tests
    above are its counterpart in the default run."""
    from mlmd.engines import lammps as L

    path = compiled_model_file("float32")
    atoms = water_box(3, seed=6)
    atoms.rattle(0.05, seed=3)
    grid = ["processors 2 2 1"]
    res = L.compute(atoms, path, nprocs=4, header_lines=grid, workdir=tmp_path / "c")
    assert "layer-by-layer evaluations run the compiled programs" in res.log
    monkeypatch.setenv("MLMD_COMPILED", "0")
    scripted = L.compute(atoms, path, nprocs=4, header_lines=grid, workdir=tmp_path / "s")
    # float32 carries 6e-8 relative per operation; a few hundred operations per value
    f_scale = float(np.abs(scripted.forces).max())
    assert abs(res.energy - scripted.energy) < 1e-6 * abs(scripted.energy)
    np.testing.assert_allclose(res.energies, scripted.energies, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.forces, scripted.forces, rtol=0, atol=1e-5 * f_scale)
    np.testing.assert_allclose(res.stress, scripted.stress, rtol=0, atol=1e-5 * float(np.abs(scripted.stress).max()))
