"""The long-range terms' Verlet list (mlmd.model.pair_cache): exactly vesin's pairs within the cutoff along a
trajectory, rebuilt only when needed, and the terms' energies and forces unchanged by it."""

import numpy as np
import torch
from vesin_torch import NeighborList

from conftest import water_box
from mlmd.model.dispersion import D3Dispersion
from mlmd.model.electrostatics import Electrostatics
from mlmd.model.pair_cache import VerletPairs

DT = torch.float64
PBC = torch.tensor([True, True, True])


def pair_set(i, j, s) -> set:
    """Pairs as unordered keys: (i, j, S) and (j, i, -S) are the same pair."""
    out = set()
    for a, b, t in zip(i.tolist(), j.tolist(), s.tolist()):
        key = (a, b, tuple(t))
        mirror = (b, a, tuple(-x for x in t))
        out.add(min(key, mirror))
    return out


def test_pairs_match_vesin_along_a_trajectory():
    atoms = water_box(3, 2)
    pos = torch.tensor(atoms.positions, dtype=DT)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    cutoff, skin = 4.0, 1.0
    cache = VerletPairs(cutoff, skin)
    reference = NeighborList(cutoff=cutoff, full_list=False)
    gen = torch.Generator().manual_seed(0)
    builds = []
    for step in range(12):
        pos = pos + 0.08 * torch.randn(pos.shape, generator=gen, dtype=DT)  # 0.14 Å per step on average
        got = pair_set(*cache(pos, cell, PBC))
        i, j, s = reference.compute(pos, cell, True, "ijS", True)
        assert got == pair_set(i, j, s), step
        builds.append(cache.builds)
    assert builds[0] == 1 and 1 < builds[-1] < 12  # reused for some steps, rebuilt when atoms moved 0.5 Å
    # another cell (an NPT step), another number of atoms, another periodicity: rebuilt at once
    n = cache.builds
    cache(pos, cell * 1.001, PBC)
    assert cache.builds == n + 1
    cache(pos[:-3], cell * 1.001, PBC)
    assert cache.builds == n + 2
    got = pair_set(*cache(pos[:-3], cell * 1.001, torch.tensor([True, True, False])))
    i, j, s = reference.compute(pos[:-3], cell * 1.001, torch.tensor([True, True, False]), "ijS", True)
    assert cache.builds == n + 3 and got == pair_set(i, j, s)
    cache.clear()
    cache(pos, cell, PBC)
    assert cache.builds == n + 4


def test_near_and_within_lists_hold_every_pair_with_its_vector():
    """within(): exactly vesin's pairs; near(): every one of them (and none beyond cutoff + skin / 2), refined
    again only after atoms moved skin / 4; both with the right vectors, squared lengths and float shifts."""
    atoms = water_box(3, 2)
    pos = torch.tensor(atoms.positions, dtype=DT)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    cutoff, skin = 4.0, 1.0
    cache = VerletPairs(cutoff, skin)
    reference = NeighborList(cutoff=cutoff, full_list=False)
    gen = torch.Generator().manual_seed(1)
    sizes = []
    for step in range(12):
        pos = pos + 0.04 * torch.randn(pos.shape, generator=gen, dtype=DT)
        i, j, s = reference.compute(pos, cell, True, "ijS", True)
        expected = pair_set(i, j, s)
        for name in ("within", "near"):
            pi, pj, ps, vec, r2 = getattr(cache, name)(pos, cell, PBC)
            assert torch.allclose(vec, pos[pj] - pos[pi] + ps @ cell, rtol=0, atol=1e-12)
            assert torch.allclose(r2, (vec * vec).sum(1), rtol=0, atol=1e-12)
            got = pair_set(pi, pj, ps.round().long())
            assert got == expected if name == "within" else got >= expected, (name, step)
            if name == "near":
                assert float(r2.max()) <= (cutoff + skin) ** 2  # within cutoff + skin / 2, both ends moved skin / 4
                sizes.append(int(r2.shape[0]))
    assert len(expected) < min(sizes)  # pairs beyond the cutoff are listed too
    assert len(set(sizes)) > 1  # the near list was selected again along the way


def test_terms_are_unchanged_by_the_reuse():
    atoms = water_box(3, 4)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    numbers = torch.tensor(atoms.numbers)
    q = torch.where(numbers == 8, -0.8, 0.4).to(DT)
    terms = []
    for skin in (0.0, 1.5):
        coulomb = Electrostatics(1e-5, method="pme", r_cut=4.5, nl_skin=skin).to(DT)
        d3 = D3Dispersion([1, 8], functional="gfn2", cutoff=6.0, cutoff_cn=6.0, smooth_width=1.5,
                          tail_correction=True, nl_skin=skin).to(DT)
        terms.append((lambda p, c=coulomb: c(p, cell, PBC, q), lambda p, d=d3: d(p, cell, numbers, PBC)))
    gen = torch.Generator().manual_seed(1)
    pos = torch.tensor(atoms.positions, dtype=DT)
    for _ in range(6):
        pos = pos + 0.1 * torch.randn(pos.shape, generator=gen, dtype=DT)
        for k in range(2):
            results = []
            for fresh_and_cached in terms:
                x = pos.clone().requires_grad_(True)
                e = fresh_and_cached[k](x)
                results.append((float(e.detach()), torch.autograd.grad(e, x)[0]))
            assert abs(results[0][0] - results[1][0]) < 1e-10
            assert torch.allclose(results[0][1], results[1][1], rtol=0, atol=1e-10)
