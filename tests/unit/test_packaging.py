"""The packaged file: same numbers as the in-memory model, in a process that never imports mlmd; model card."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import torch

from conftest import REPO, make_potential, water_box
from mlmd.data.graph import collate, neighbor_list
from mlmd.data.structures import structure_from_atoms
from mlmd.deploy.export import package
from mlmd.deploy.load import load_model
from mlmd.model.assembly import EnergyAssembly
from mlmd.train.dataset import z_to_species_table

FRESH = r"""
import json, sys
import numpy as np, torch
import vesin_torch  # the neighbour-list op the archive uses; mlmd itself is never imported
assert "mlmd" not in sys.modules
extra = {"mlmd_metadata.json": ""}
m = torch.jit.load(sys.argv[1], _extra_files=extra)
meta = json.loads(extra["mlmd_metadata.json"])
d = np.load(sys.argv[2])
dt = getattr(torch, meta["dtype"])
out = m.compute(torch.tensor(d["pos"], dtype=dt), torch.tensor(d["cell"], dtype=dt),
                torch.tensor(d["numbers"]), torch.tensor(d["pbc"]), True)
e = m(torch.tensor(d["pos"], dtype=dt), torch.tensor(d["cell"], dtype=dt), torch.tensor(d["numbers"]),
      torch.tensor(d["pbc"]))
assert "mlmd" not in sys.modules
np.savez(sys.argv[3], energy=float(out["energy"]), energy_fwd=float(e), forces=out["forces"].double().numpy(),
         stress=out["stress"].double().numpy(), elements=np.array(meta["elements"]))
"""


def test_fresh_process_matches_in_memory_model(tmp_path):
    pot = make_potential(dtype=torch.float64, seed=11)
    path = tmp_path / "m.pt"
    package(pot, path)
    atoms = water_box(2, 12)
    s = structure_from_atoms(atoms)
    b = collate([s], [neighbor_list(s.positions, s.cell, s.pbc, pot.r_cut)], z_to_species_table([1, 8]),
                torch.float64)
    ref = EnergyAssembly(pot).batch_properties(b, True, True, False)
    np.savez(tmp_path / "in.npz", pos=atoms.positions, cell=atoms.cell.array, numbers=atoms.numbers, pbc=atoms.pbc)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    # run from an empty folder with a clean path so `import mlmd` could not even find the package
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-I", str(script), str(path), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   check=True, cwd=tmp_path, env=env)
    out = np.load(tmp_path / "out.npz")
    e_ref = float(ref["energy"][0].detach())
    assert abs(float(out["energy"]) - e_ref) < 1e-12 * abs(e_ref)
    assert abs(float(out["energy_fwd"]) - e_ref) < 1e-12 * abs(e_ref)
    np.testing.assert_allclose(out["forces"], ref["forces"].detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["stress"], ref["stress"][0].detach().numpy(), rtol=0, atol=1e-13)
    assert list(out["elements"]) == ["H", "O"]


def test_local_graph_entry_matches_whole_system(model_files):
    """The LAMMPS entry (engine-built graph) gives the same per-atom energies as the whole-system entry."""
    m, card = load_model(model_files["float64"])
    atoms = water_box(2, 13)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    numbers = torch.tensor(atoms.numbers)
    pbc = torch.tensor([True, True, True])
    ref = m.atomic_energies(pos, cell, numbers, pbc)
    ei, sh = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, card.r_cut)
    vec = pos[ei[1]] - pos[ei[0]] + torch.tensor(sh) @ cell
    local = m.local_energies(m.species_of(numbers), torch.tensor(ei), vec, len(atoms))
    np.testing.assert_allclose(local.detach().numpy(), ref.detach().numpy(), atol=1e-12)
    assert m.interaction_range == card.n_layers * card.r_cut == card.interaction_range


def test_model_card_and_info(model_files):
    out = subprocess.run([sys.executable, "-m", "mlmd.cli", "info", str(model_files["float32"])],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "elements        H O" in out.stdout and "checksum verified" in out.stdout
    _, card = load_model(model_files["float32"])
    meta = json.loads(card.to_json())
    for key in ("mlmd_version", "format_version", "atomic_numbers", "r_cut", "units", "long_range", "dtype",
                "weights_sha256", "hparams", "entry_points", "min_distance"):
        assert key in meta
    assert card.dtype == "float32"
    out = subprocess.run([sys.executable, "-m", "mlmd.cli", "info", "--json", str(model_files["float32"])],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.split("\nweights checksum verified")[0]) == meta


def test_repackaged_file_keeps_weights_and_numbers(model_files, tmp_path):
    """`mlmd package MODEL.pt` compiles a model file again: same weights and card, same results, and the
    weights of the served model need no gradient (forces are still -dE/dR: checked above and in the engines)."""
    from mlmd.deploy.export import is_packaged_model

    src = model_files["float64"]
    out = tmp_path / "again.pt"
    assert is_packaged_model(src)
    subprocess.run([sys.executable, "-m", "mlmd.cli", "package", str(src), "-o", str(out), "--no-validate"],
                   check=True, cwd=REPO, capture_output=True)
    (m0, card0), (m1, card1) = load_model(src), load_model(out)
    assert card1.weights_sha256 == card0.weights_sha256
    assert replace(card1, created="") == replace(card0, created="")
    assert not any(p.requires_grad for p in m1.parameters())
    atoms = water_box(2, 14)
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), torch.tensor(atoms.numbers),
            torch.tensor([True, True, True]), True)
    a, b = m0.compute(*args), m1.compute(*args)
    for key in ("energy", "forces", "stress", "atomic_energies"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-12)


def test_mirrored_edge_order_gives_the_same_energies_and_forces():
    """A full list given as [pairs, their reverses, other edges] with n_mirrored = number of pairs (what the
    packaged model builds from a half list) computes the radial part once per pair: same per-atom energies and
    forces as without the hint, with some edges left unmirrored."""
    from vesin_torch import NeighborList

    pot = make_potential(dtype=torch.float64, seed=5)
    atoms = water_box(2, 15)
    pos = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    i, j, s = NeighborList(cutoff=pot.r_cut, full_list=False).compute(pos.detach(), cell, torch.tensor([True] * 3),
                                                                       "ijS", True)
    i, j, s = i.long(), j.long(), s.to(torch.float64)
    species = torch.tensor(np.searchsorted([1, 8], atoms.numbers))
    # pairs [0, k) mirrored, pairs [k, len) given in both directions after them (k = len: all mirrored)
    for k in (len(i) // 2, len(i)):
        src = torch.cat([i[:k], j[:k], i[k:], j[k:]])
        dst = torch.cat([j[:k], i[:k], j[k:], i[k:]])
        shifts = torch.cat([s[:k], -s[:k], s[k:], -s[k:]])

        vec = pos[dst] - pos[src] + shifts @ cell
        out = []
        for n_mirrored in (0, k):
            e = pot(species, torch.stack([src, dst]), vec, n_mirrored)
            out.append((e.detach(), -torch.autograd.grad(e.sum(), pos, retain_graph=True)[0]))
        (e0, f0), (e1, f1) = out
        assert k > 10 and np.abs(f0.numpy()).max() > 1e-3
        torch.testing.assert_close(e1, e0, rtol=0, atol=1e-13)
        torch.testing.assert_close(f1, f0, rtol=0, atol=1e-13)
