"""D3(BJ) with a smooth (C2) cutoff and the mean-field tail correction (mlmd.model.dispersion_pairs).

References: simple-dftd3 at its standard cutoffs for the energy of a water box (the tail correction must
recover what the short cutoff drops), finite differences for forces and stress (the pair terms are
linearised with analytic derivatives, the tail depends on the volume and the coordination numbers).
"""

import numpy as np
import pytest
import torch
from ase.build import molecule
from test_dispersion import DT, evaluate, reference
from test_dispersion_atm import fd_check

from conftest import water_box
from mlmd.model.d3_parameters import PRODUCTION_SETTINGS, d3_cutoffs_angstrom
from mlmd.model.dispersion import D3Dispersion

pytest.importorskip("dftd3.interface")


def test_tail_correction_recovers_the_standard_cutoff_energy():
    atoms = water_box(3, seed=2)  # 81 atoms, 9.3 Å box
    n = len(atoms)
    e_ref = reference(atoms, {"method": "pbe", "atm": False}, d3_cutoffs_angstrom())[0]
    short = {k: v for k, v in PRODUCTION_SETTINGS.items() if k != "tail_correction"}  # the recommended ones
    assert PRODUCTION_SETTINGS["tail_correction"]
    e_cut = evaluate(D3Dispersion([1, 8], "pbe", **short).to(DT), atoms)[0]
    e_tail = evaluate(D3Dispersion([1, 8], "pbe", tail_correction=True, **short).to(DT), atoms)[0]
    assert (e_cut - e_ref) / n > 1.5e-3  # the short cutoff alone misses > 1.5 meV/atom
    assert abs(e_tail - e_ref) / n < 1e-4, (e_tail - e_ref) / n
    # the tail of a sharp cutoff: a different integral, the same answer
    e_sharp = evaluate(D3Dispersion([1, 8], "pbe", cutoff=9.0, cutoff_cn=9.0, tail_correction=True).to(DT), atoms)[0]
    assert abs(e_sharp - e_ref) / n < 1e-4


def test_tail_correction_only_for_3d_periodic_systems():
    mol = molecule("CH3CH2OH")
    kw = {"cutoff": 5.0, "cutoff_cn": 5.0, "smooth_width": 1.0}
    plain = evaluate(D3Dispersion([1, 6, 8], "pbe", **kw).to(DT), mol)[0]
    assert evaluate(D3Dispersion([1, 6, 8], "pbe", tail_correction=True, **kw).to(DT), mol)[0] == plain


@pytest.mark.parametrize("tail,cutoff_cn", [(False, 5.0), (True, 5.0), (True, 6.0)])  # 6.0: equal cutoffs
def test_smooth_cutoff_forces_and_stress_match_finite_differences(tail, cutoff_cn):
    atoms = water_box(2, seed=5)
    atoms.rattle(0.05, seed=1)
    c = np.asarray(atoms.cell.array).copy()
    c[1] += 0.3 * c[0]
    atoms.set_cell(c, scale_atoms=True)
    module = D3Dispersion([1, 8], "pbe", cutoff=6.0, cutoff_cn=cutoff_cn, smooth_width=2.5,
                          tail_correction=tail).to(DT)
    # the switch is C2 only: a small step keeps the O(h^2) error of the difference below 1e-9
    fd_check(module, atoms, h=2e-5, hs=2e-5, tol=1e-8, every=3)


def test_smooth_cutoff_is_continuous_and_sharp_one_is_not():
    """A dimer across the cutoff: the smooth energy and force go to zero there; the sharp energy jumps."""
    def energy_force(module, r):
        pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, r]], dtype=DT, requires_grad=True)
        e = module(pos, torch.zeros(3, 3, dtype=DT), torch.tensor([8, 8]), torch.tensor([False] * 3))
        (g,) = torch.autograd.grad(e, [pos])
        return float(e.detach()), float(g[1, 2])

    smooth = D3Dispersion([8], "pbe", cutoff=6.0, cutoff_cn=6.0, smooth_width=1.5).to(DT)
    sharp = D3Dispersion([8], "pbe", cutoff=6.0, cutoff_cn=6.0).to(DT)
    e_in, f_in = energy_force(smooth, 6.0 - 1e-4)
    e_mid = energy_force(smooth, 5.25)[0]
    assert abs(e_in) < 1e-9 * abs(e_mid) and abs(f_in) < 1e-7 * abs(e_mid)
    assert energy_force(smooth, 6.0 + 1e-4) == (0.0, 0.0)
    assert abs(energy_force(sharp, 6.0 - 1e-4)[0]) > 1e-4
    assert energy_force(smooth, 4.4)[0] == energy_force(sharp, 4.4)[0]  # below the switching region: unchanged


def test_bad_smooth_width_is_refused():
    with pytest.raises(ValueError, match="smooth_width"):
        D3Dispersion([1, 8], cutoff=6.0, cutoff_cn=4.0, smooth_width=4.0)
    with pytest.raises(ValueError, match="smooth_width"):
        D3Dispersion([1, 8], smooth_width=-1.0)


def test_torchscript_keeps_smooth_cutoff_and_tail():
    atoms = water_box(2, seed=3)
    module = D3Dispersion([1, 8], "gfn2", cutoff=7.0, cutoff_cn=7.0, smooth_width=2.0, tail_correction=True).to(DT)
    scripted = torch.jit.script(module)
    assert evaluate(scripted, atoms)[0] == pytest.approx(evaluate(module, atoms)[0], abs=1e-12)
    meta = module.metadata()
    assert meta["smooth_width"] == pytest.approx(2.0) and meta["tail_correction"] is True




@pytest.mark.parametrize("cutoff_cn", [5.0, 6.0])
def test_gradient_of_a_rank_s_energies_matches_finite_differences(cutoff_cn):
    """What a domain-decomposed engine differentiates: the sum of its own atoms' D3 energies from the graph entry
    (edge vectors of a full neighbour list, the other atoms as nodes with their edges), against finite differences
    of the same atoms' whole-system energies. The derivatives are chained by hand (dispersion_two_body), so only
    the sum over the engine's atoms is checked, not one atom's share alone."""
    from vesin_torch import NeighborList

    atoms = water_box(2, seed=7)
    atoms.rattle(0.05, seed=2)
    module = D3Dispersion([1, 8], "gfn2", cutoff=6.0, cutoff_cn=cutoff_cn, smooth_width=2.0).to(DT)
    pos0 = torch.tensor(atoms.positions, dtype=DT)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    numbers, pbc = torch.tensor(atoms.numbers), torch.tensor(atoms.pbc)
    i, j, shifts = NeighborList(cutoff=6.0, full_list=True).compute(pos0, cell, True, "ijS")
    edges = torch.stack([i.long(), j.long()])
    n_local = 9

    def part(p):
        return module.atomic_energies(p, cell, numbers, pbc)[:n_local].sum()

    pos = pos0.clone().requires_grad_(True)
    vectors = pos[edges[1]] - pos[edges[0]] + shifts.to(DT) @ cell
    energies = module.graph_energies(numbers, edges, vectors, n_local)[0]
    assert float((energies.detach() - module.atomic_energies(pos0, cell, numbers, pbc)[:n_local]).abs().max()) < 1e-12
    (g,) = torch.autograd.grad(energies.sum(), [pos])
    h = 2e-5
    for a in (0, 4, 10, 20):
        for k in range(3):
            dp = torch.zeros_like(pos0)
            dp[a, k] = h
            fd = (float(part(pos0 + dp)) - float(part(pos0 - dp))) / (2 * h)
            assert abs(fd - float(g[a, k])) < 1e-8, (a, k, fd, float(g[a, k]))
    assert float(g.abs().max()) > 1e-3


def test_config_defaults_are_the_production_settings_and_old_checkpoints_keep_theirs():
    """New configs get the measured production D3 settings; a checkpoint written before the smoothing and tail
    existed (no such keys in its long-range section) is rebuilt with sharp cutoffs and no tail, as trained."""
    from mlmd.config import LongRangeConfig
    from mlmd.deploy.export import checkpoint_long_range
    from mlmd.model.d3_parameters import PRODUCTION_SETTINGS
    from mlmd.model.longrange import DispersionTerm, build_long_range

    (term,) = build_long_range(LongRangeConfig(dispersion="d3bj"), [1, 8])
    assert isinstance(term, DispersionTerm)
    meta = term.metadata()
    for key, value in PRODUCTION_SETTINGS.items():
        assert meta[key] == pytest.approx(value), key
    old = {"dispersion": "d3bj", "functional": "gfn2", "d3_cutoff": 12.0, "electrostatics": "none"}
    (term,) = checkpoint_long_range({"config": {"model": {"long_range": old}}, "hparams": {"atomic_numbers": [1, 8]}})
    meta = term.metadata()
    assert meta["cutoff"] == pytest.approx(12.0) and meta["smooth_width"] == 0.0 and not meta["tail_correction"]


def test_periodic_graph_with_mirrored_pairs_is_the_whole_system():
    """The one-rank LAMMPS path: every atom local, each pair's two edges mirrored (the first n_mirrored edges, their
    reverses next), equal two-body and CN cutoffs (one switch for both), the tail from the graph's own weights:
    energies per atom and forces equal the whole-system term's (forces against its autograd)."""
    from vesin_torch import NeighborList

    atoms = water_box(2, seed=3)
    atoms.rattle(0.05, seed=5)
    module = D3Dispersion([1, 8], "gfn2", cutoff=6.0, cutoff_cn=6.0, smooth_width=2.0, tail_correction=True).to(DT)
    pos = torch.tensor(atoms.positions, dtype=DT, requires_grad=True)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=DT)
    numbers, pbc = torch.tensor(atoms.numbers), torch.tensor(atoms.pbc)
    i, j, shifts = NeighborList(cutoff=6.0, full_list=False).compute(pos.detach(), cell, True, "ijS")
    i, j = i.long(), j.long()
    half = pos[j] - pos[i] + shifts.to(DT) @ cell
    edges = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
    vectors = torch.cat([half, -half])
    n = len(atoms)
    energies, weights, sums = module.graph_energies(numbers, edges, vectors, n, i.shape[0])
    energies = energies + module.graph_tail(numbers, weights, sums, float(abs(np.linalg.det(atoms.cell.array))))
    reference = module.atomic_energies(pos, cell, numbers, pbc)
    assert float((energies - reference).detach().abs().max()) < 1e-12
    (g,) = torch.autograd.grad(energies.sum(), [pos])
    (g_ref,) = torch.autograd.grad(reference.sum(), [pos])
    assert float((g - g_ref).abs().max()) < 1e-10 * float(g_ref.abs().max())
