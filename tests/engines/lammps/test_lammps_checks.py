"""pair_style mlmd refuses what it cannot compute right, each time with a message that names the cause and the
fix: bonded pairs that special_bonds leaves out of the neighbour list, a model file whose weights or card were
changed after packaging, atom types whose masses say pair_coeff gave them the wrong element. And the pieces
those checks rest on: the plugin's SHA-256 against hashlib, its table of atomic weights against ASE's, its
one-line reasons for exceptions.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import REPO, make_potential, water_box
from mlmd.deploy.export import package
from mlmd.deploy.load import ModelFileError, load_model
from mlmd.engines import lammps as L
from mlmd.engines.ase import MLMDCalculator

pytestmark = pytest.mark.lammps

PLUGIN_SRC = REPO / "plugins" / "lammps"


def _energy_and_forces(log: str, dump: Path, n: int) -> tuple[float, np.ndarray]:
    energy = float(re.search(r"^MLMD_E (\S+)$", log, re.M).group(1))
    rows = np.loadtxt(dump, skiprows=9)
    assert rows.shape == (n, 4)
    return energy, rows[:, 1:4]


# ------------------------------------------------------------------------------------------------------------
# 1. bonds and special_bonds


def write_water_full(atoms, path: Path, names: list[str], bonds: bool = True, angles: bool = False) -> np.ndarray:
    """A classical-force-field style data file of water (atom_style full: molecule IDs, charges, O-H bonds and
    optionally H-O-H angles); the molecules are O, H, H in order (mlmd.data.generate.water_lattice). Returns the
    LAMMPS frame's rotation M (x_lammps = x_ase @ M)."""
    from ase.data import atomic_masses, atomic_numbers

    m, cell, pos = L.lammps_frame(atoms)
    symbols = atoms.get_chemical_symbols()
    n_mol = len(atoms) // 3
    assert symbols == ["O", "H", "H"] * n_mol
    type_of = {n: t for t, n in enumerate(names, start=1)}
    charge = {"O": -0.834, "H": 0.417}
    lines = ["water, atom_style full (written by test_lammps_checks.py)", "", f"{len(atoms)} atoms"]
    lines += [f"{2 * n_mol if bonds else 0} bonds", f"{n_mol if angles else 0} angles"]
    lines += [f"{len(names)} atom types", "1 bond types", "1 angle types", ""]
    lines += [f"0.0 {L._num(cell[k, k])} {x}lo {x}hi" for k, x in enumerate("xyz")]
    lines += ["", "Masses", ""] + [f"{t} {L._num(atomic_masses[atomic_numbers[n]])}" for t, n in enumerate(names, 1)]
    lines += ["", "Atoms  # full", ""]
    for k, (s, p) in enumerate(zip(symbols, pos)):
        lines.append(f"{k + 1} {k // 3 + 1} {type_of[s]} {charge[s]} " + " ".join(L._num(v) for v in p))
    if bonds:
        lines += ["", "Bonds", ""]
        for mol in range(n_mol):
            o = 3 * mol + 1
            lines += [f"{2 * mol + 1} 1 {o} {o + 1}", f"{2 * mol + 2} 1 {o} {o + 2}"]
    if angles:
        lines += ["", "Angles", ""] + [f"{mol + 1} 1 {3 * mol + 2} {3 * mol + 1} {3 * mol + 3}" for mol in range(n_mol)]
    path.write_text("\n".join(lines) + "\n")
    return m


FULL = """\
units           metal
atom_style      full
atom_modify     map array
boundary        p p p
newton          on
{header}
read_data       data.lmp
bond_style      zero
bond_coeff      *
angle_style     zero
angle_coeff     *
{special}
pair_style      mlmd {model}
pair_coeff      * * {elements}
dump            d all custom 1 forces.txt id fx fy fz
dump_modify     d sort id format float %.17g
run             0
print           "MLMD_E $(pe:%.17g)"
"""


@pytest.fixture(scope="module")
def water(tmp_path_factory, model_files):
    """8 waters (24 atoms, 6.2 Å box: the O-H and H-H pairs of each molecule are well within r_cut 3.5 Å) and the
    ASE calculator's energy and forces (the reference: it sees every pair)."""
    atoms = water_box(2, seed=5)
    a = atoms.copy()
    a.calc = MLMDCalculator(model_files["float64"])
    return atoms, a.get_potential_energy(), a.get_forces()


def _run_full(tmp_path, model, atoms, special="", nprocs=1, bonds=True, angles=False, header=""):
    names = L.model_elements(model)  # H O
    m = write_water_full(atoms, tmp_path / "data.lmp", names, bonds=bonds, angles=angles)
    (tmp_path / "in.full").write_text(FULL.format(header=header, special=special, model=model,
                                                  elements=" ".join(names)))
    log = L.run_lammps(tmp_path / "in.full", tmp_path, nprocs=nprocs, in_process=nprocs == 1)
    energy, forces = _energy_and_forces(log, tmp_path / "forces.txt", len(atoms))
    return energy, forces @ m.T, log


def test_default_special_bonds_are_refused(model_files, water, tmp_path):
    """The default special_bonds (lj/coul 0 0 0) leaves the O-H (1-2) and H-H (1-3) pairs of each molecule out
    of the neighbour list: refused, naming the pairs and the fix."""
    atoms = water[0]
    with pytest.raises(L.LammpsError, match=r"this system has bonds, and special_bonds \(lj 0 0 0, coul 0 0 0\) "
                       r"makes LAMMPS leave its 1-2, 1-3, 1-4 pairs out of the neighbour list, so the model would not "
                       r"see 16 1-2, 8 1-3 pair\(s\) of bonded atoms \(e.g. atom IDs \d+ and \d+\).*"
                       r"'special_bonds lj/coul 1.0 1.0 1.0'"):
        _run_full(tmp_path, model_files["float64"], atoms)
    # an AMBER-like setting still leaves the 1-2 and 1-3 pairs out
    with pytest.raises(L.LammpsError, match=r"special_bonds \(lj 0 0 0.5, coul 0 0 0.8333.*leave its 1-2, 1-3 "
                       r"pairs out"):
        _run_full(tmp_path, model_files["float64"], atoms, special="special_bonds lj 0.0 0.0 0.5 coul 0.0 0.0 0.8333")


@pytest.mark.parametrize("nprocs", [1, 2])
def test_special_bonds_one_one_one_matches_ase(model_files, water, tmp_path, nprocs):
    """With special_bonds lj/coul 1 1 1 the bonded pairs stay in the list: LAMMPS == ASE (float64 model)."""
    atoms, e_ref, f_ref = water
    header = "processors 2 1 1" if nprocs == 2 else ""
    energy, forces, log = _run_full(tmp_path, model_files["float64"], atoms,
                                    special="special_bonds lj/coul 1.0 1.0 1.0", nprocs=nprocs, header=header)
    assert abs(energy - e_ref) <= 1e-10 * abs(e_ref), (energy, e_ref)
    np.testing.assert_allclose(forces, f_ref, rtol=0, atol=1e-10)
    if nprocs == 2:  # `mpirun lmp` found this checkout's plugin (through the entry point, PYTHONPATH)
        assert f"Loaded 1 plugins from {PLUGIN_SRC / 'build'}" in log


def test_special_bonds_that_leave_no_pair_of_the_model_out(model_files, water, tmp_path):
    """What counts is which pairs LAMMPS really leaves out: a zero 1-3 factor with `angle yes` and no angles
    leaves none (1-3 pairs are then only those of an angle), lj 0 with coul 0.5 keeps the pairs (weighted, which
    the model ignores), and atom_style full with no bonds has no bonded pairs at all. All run and match ASE."""
    atoms, e_ref, _ = water
    model = model_files["float64"]
    for special, bonds in [("special_bonds lj/coul 1.0 0.0 1.0 angle yes", True),
                           ("special_bonds lj 0.0 0.0 0.0 coul 0.5 0.5 0.5", True), ("", False)]:
        energy, _, _ = _run_full(tmp_path, model, atoms, special=special, bonds=bonds)
        assert abs(energy - e_ref) <= 1e-10 * abs(e_ref), special
    # the same 1-3 factor with the angles defined leaves the H-H pairs out
    with pytest.raises(L.LammpsError, match=r"leave its 1-3 pairs out .* would not see 8 1-3 pair"):
        _run_full(tmp_path, model, atoms, special="special_bonds lj/coul 1.0 0.0 1.0 angle yes", angles=True)


def test_a_kspace_style_keeps_the_bonded_pairs(model_files, water, tmp_path):
    """With a KSpace style LAMMPS keeps the excluded pairs in the list (coul/long subtracts their Coulomb
    itself): the default special_bonds then leaves the model's graph whole, so it runs, and the model's part of
    the energy (compute pair mlmd) is ASE's."""
    atoms, e_ref, _ = water
    model = model_files["float64"]
    write_water_full(atoms, tmp_path / "data.lmp", ["H", "O"])
    text = FULL.format(header="", special="", model=model, elements="H O").replace(
        f"pair_style      mlmd {model}\npair_coeff      * * H O",
        f"pair_style      hybrid/overlay mlmd {model} coul/long 3.0\npair_coeff      * * mlmd H O\n"
        "pair_coeff      * * coul/long\nkspace_style    ewald 1e-6\ncompute         pm all pair mlmd").replace(
        'print           "MLMD_E $(pe:%.17g)"', 'print           "MLMD_E $(c_pm:%.17g)"')
    (tmp_path / "in.kspace").write_text(text)
    energy = float(re.search(r"^MLMD_E (\S+)$", L.run_lammps(tmp_path / "in.kspace", tmp_path), re.M).group(1))
    assert abs(energy - e_ref) <= 1e-10 * abs(e_ref)


def test_bonds_to_atoms_of_another_style_do_not_count(model_files, water, tmp_path):
    """Under hybrid/overlay with the H atoms given to another style (NULL for mlmd), the O-H and H-H pairs the
    default special_bonds leaves out are not the model's: accepted."""
    atoms = water[0]
    model = model_files["float64"]
    write_water_full(atoms, tmp_path / "data.lmp", ["H", "O"])
    text = FULL.format(header="", special="", model=model, elements="H O").replace(
        f"pair_style      mlmd {model}\npair_coeff      * * H O",
        f"pair_style      hybrid/overlay mlmd {model} zero 3.5\npair_coeff      * * mlmd NULL O\npair_coeff * * zero")
    (tmp_path / "in.null").write_text(text)
    oxygens = atoms[[s == "O" for s in atoms.get_chemical_symbols()]]
    oxygens.calc = MLMDCalculator(model)
    energy = float(re.search(r"^MLMD_E (\S+)$", L.run_lammps(tmp_path / "in.null", tmp_path), re.M).group(1))
    assert abs(energy - oxygens.get_potential_energy()) <= 1e-10 * abs(energy)


# ------------------------------------------------------------------------------------------------------------
# 3-4. the model file: weights checksum, card against the module

LOAD_ONLY = """\
units           metal
atom_style      atomic
region          box block 0 10 0 10 0 10
create_box      2 box
pair_style      mlmd {model}
"""


def _load_in_lammps(model: Path, workdir: Path) -> str:
    script = workdir / f"in.load_{model.stem}"
    script.write_text(LOAD_ONLY.format(model=L._quote(model)))
    return L.run_lammps(script, workdir, in_process=False)


def _rewrite(src: Path, dst: Path, edit_card=None, flip_weight_byte: bool = False) -> None:
    """Copy a model file, editing its card or flipping one bit of one byte of one weight."""
    extra = {"mlmd_metadata.json": ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    card = json.loads(extra["mlmd_metadata.json"])
    if edit_card:
        edit_card(card)
    if flip_weight_byte:
        name, weight = sorted(module.state_dict().items())[-1]
        with torch.no_grad():
            weight.view(-1).view(torch.uint8)[3] ^= 0x10
    torch.jit.save(module, str(dst), _extra_files={"mlmd_metadata.json": json.dumps(card)})


@pytest.fixture(scope="module")
def committee_file(tmp_path_factory) -> Path:
    from mlmd.model.ensemble import EnsemblePotential

    path = tmp_path_factory.mktemp("committee") / "committee.pt"
    package(EnsemblePotential([make_potential(seed=k) for k in (1, 2)]), path)
    return path


@pytest.mark.parametrize("which", ["float64", "float32", "committee", "bundled", "bundled_hybrid"])
def test_good_files_load_with_their_checksum_verified(which, model_files, committee_file, tmp_path):
    """The C++ checksum of the loaded module's parameters and buffers equals the card's, which Python computed
    from state_dict() (names, order, shared buffers listed under each name, bool and int buffers), for every
    kind of model file."""
    model = {"float64": model_files["float64"], "float32": model_files["float32"], "committee": committee_file,
             "bundled": REPO / "inputs/water/water_model.pt",
             "bundled_hybrid": REPO / "inputs/water/water_model_hybrid.pt"}[which]
    card = L.model_card(model)
    log = _load_in_lammps(model, tmp_path)
    assert f"weights sha256 {card.weights_sha256[:12]}... verified" in log


def test_a_flipped_weight_byte_is_refused(model_files, tmp_path):
    bad = tmp_path / "flipped.pt"
    _rewrite(model_files["float64"], bad, flip_weight_byte=True)
    with pytest.raises(ModelFileError, match="checksum mismatch"):  # as in ASE, OpenMM and `mlmd info`
        load_model(bad)
    card = L.model_card(bad)
    module = torch.jit.load(str(bad))
    from mlmd.deploy.checksum import weights_sha256

    actual = weights_sha256(module)
    assert actual != card.weights_sha256
    with pytest.raises(L.LammpsError, match=rf"'.*flipped.pt': weights checksum mismatch \(the model card says "
                       rf"{card.weights_sha256[:12]}\.\.\., the weights give {actual[:12]}\.\.\.\): the file was "
                       r"modified after packaging; refusing to load it"):
        _load_in_lammps(bad, tmp_path)


def _set(**values):
    return lambda card: card.update(values)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(r_cut=4.0), r"model card field r_cut is 4 Å but the model itself has r_cut 3.5 Å"),
        (_set(r_cut=4.0, interaction_range=8.0), r"model card field r_cut is 4 Å but the model itself has r_cut 3.5"),
        (_set(elements=["O", "H"]), r"model card field elements \[\"O\", \"H\"\] does not match its atomic_numbers "
                                    r"\[1, 8\]"),
        (_set(elements=["O", "H"], atomic_numbers=[8, 1]),
         r"model card field elements is \[\"O\", \"H\"\] \(atomic numbers \[8, 1\]\) but the model itself has "
         r"\[\"H\", \"O\"\] \(atomic_numbers \[1, 8\]\)"),
        (_set(elements=["H", "Xx"]), r"model card field elements \[\"H\", \"Xx\"\]: 'Xx' is not an element symbol"),
        (_set(n_layers=3, interaction_range=10.5), r"model card field n_layers is 3 but the model itself has "
                                                   r"n_layers 2"),
        (_set(interaction_range=3.5, n_layers=1), r"model card field n_layers is 1 but the model itself has "
                                                  r"n_layers 2"),
        (_set(dtype="float32"), r"model card field dtype is 'float32' but the model itself has weights of dtype "
                                r"float64"),
        (_set(n_members=2), r"model card field n_members is 2 but the model itself has n_members 1"),
        (_set(min_distance=5.0), r"model card field min_distance 5 is not in \[0, r_cut = 3.5\)"),
    ],
)
def test_an_edited_card_is_refused_naming_the_field(model_files, tmp_path, edit, message):
    bad = tmp_path / "edited.pt"
    _rewrite(model_files["float64"], bad, edit_card=edit)
    with pytest.raises(L.LammpsError, match=message):
        _load_in_lammps(bad, tmp_path)


# ------------------------------------------------------------------------------------------------------------
# 5. masses against elements

MASSES = """\
units           metal
atom_style      {style}
atom_modify     map array
newton          on
read_data       data.lmp
pair_style      mlmd {model}{keywords}
pair_coeff      * * {elements}
{after}
run             0
print           "MLMD_E $(pe:%.17g)"
"""


def _run_masses(tmp_path, model, elements, keywords="", after="", style="atomic") -> str:
    (tmp_path / "in.masses").write_text(MASSES.format(model=model, elements=elements, keywords=keywords, after=after,
                                                      style=style))
    return L.run_lammps(tmp_path / "in.masses", tmp_path)


def test_masses_that_contradict_pair_coeff_are_refused(model_files, tmp_path):
    model = model_files["float64"]
    L.write_data(water_box(1, seed=0), tmp_path / "data.lmp", ["H", "O"])  # type 1 = H (1.008), type 2 = O
    _run_masses(tmp_path, model, "H O")
    with pytest.raises(L.LammpsError, match=r"atom type 1 has mass 1.008 but pair_coeff gives it element O \(standard "
                       r"atomic weight 15.999\): that mass suggests H\. Check that pair_coeff lists the elements in "
                       r"the order of the atom types .*'pair_style mlmd .* check_masses no'"):
        _run_masses(tmp_path, model, "O H")
    # masses set after pair_coeff are the ones checked (at the run)
    with pytest.raises(L.LammpsError, match=r"atom type 2 has mass 12.011 but pair_coeff gives it element O "
                       r".*suggests C \(not in this model\)"):
        _run_masses(tmp_path, model, "H O", after="mass 2 12.011")
    # deuterium is outside the tolerance on purpose; check_masses no runs it (and the swapped types too)
    with pytest.raises(L.LammpsError, match=r"atom type 1 has mass 2.014 but pair_coeff gives it element H"):
        _run_masses(tmp_path, model, "H O", after="mass 1 2.014")
    heavy = _run_masses(tmp_path, model, "H O", keywords=" check_masses no", after="mass 1 2.014")
    swapped = _run_masses(tmp_path, model, "O H", keywords=" parallel auto check_masses no")
    assert "MLMD_E" in heavy and "MLMD_E" in swapped
    with pytest.raises(L.LammpsError, match=r"check_masses 'maybe' is not one of yes, no"):
        _run_masses(tmp_path, model, "H O", keywords=" check_masses maybe")
    with pytest.raises(L.LammpsError, match=r"keyword 'check_masses' needs a value"):
        _run_masses(tmp_path, model, "H O", keywords=" parallel halo check_masses")


def test_per_atom_masses_are_checked(model_files, tmp_path):
    """atom_style sphere: each atom has its own mass (diameter 0: the density column is the mass); every atom's
    is checked."""
    model = model_files["float64"]
    atoms = water_box(1, seed=0)
    _, cell, pos = L.lammps_frame(atoms)

    def write(masses):
        lines = ["sphere water", "", f"{len(atoms)} atoms", "2 atom types", ""]
        lines += [f"0.0 {L._num(cell[k, k])} {x}lo {x}hi" for k, x in enumerate("xyz")]
        lines += ["", "Atoms  # sphere", ""]
        for k, (s, p, m) in enumerate(zip(atoms.get_chemical_symbols(), pos, masses)):
            lines.append(f"{k + 1} {1 if s == 'H' else 2} 0.0 {m!r} " + " ".join(L._num(v) for v in p))
        (tmp_path / "data.lmp").write_text("\n".join(lines) + "\n")

    masses = [15.999 if s == "O" else 1.008 for s in atoms.get_chemical_symbols()]  # O H H
    masses[1] *= 1.1  # 10% heavier: within 0.5 u
    write(masses)
    _run_masses(tmp_path, model, "H O", style="sphere")
    with pytest.raises(L.LammpsError, match=r"atom type 1 has atoms of mass 1.008 but pair_coeff gives it element "
                       r"O .*suggests H"):
        _run_masses(tmp_path, model, "O H", style="sphere")
    masses[2] = 14.007  # one H atom with the mass of N
    write(masses)
    with pytest.raises(L.LammpsError, match=r"atom type 1 has atoms of mass 14.007 but pair_coeff gives it element "
                       r"H .*suggests N \(not in this model\)"):
        _run_masses(tmp_path, model, "H O", style="sphere")


def test_metal_types_in_the_wrong_order(tmp_path):
    """The issue's Cu/Au case: a Cu-Au model, a data file with type 1 = Cu, pair_coeff * * Au Cu."""
    model = tmp_path / "cuau.pt"
    package(make_potential(atomic_numbers=(29, 79), r_cut=4.0, seed=3), model)
    atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 2, 2))
    atoms.symbols[::3] = "Au"
    L.write_data(atoms, tmp_path / "data.lmp", ["Cu", "Au"])
    assert "MLMD_E" in _run_masses(tmp_path, model, "Cu Au")
    with pytest.raises(L.LammpsError, match=r"atom type 1 has mass 63.546 but pair_coeff gives it element Au "
                       r"\(standard atomic weight 196.967\): that mass suggests Cu\."):
        _run_masses(tmp_path, model, "Au Cu")


def test_atomic_weight_table_is_asés(tmp_path):
    """plugins/lammps/mlmd_elements.cpp's symbols and weights are ASE's (IUPAC) for Z = 1..118."""
    from ase.data import atomic_masses, chemical_symbols

    text = (PLUGIN_SRC / "mlmd_elements.cpp").read_text()
    table = re.findall(r'\{"([A-Z][a-z]?)", ([0-9.]+)\}', text)
    assert [s for s, _ in table] == chemical_symbols[1:119]
    np.testing.assert_array_equal([float(w) for _, w in table], atomic_masses[1:119])


# ------------------------------------------------------------------------------------------------------------
# the C++ pieces on their own: SHA-256 against hashlib, first_line

HARNESS = r"""
#include "mlmd_text.h"
#include "sha256.h"

#include <iostream>
#include <iterator>
#include <string>

int main(int argc, char **argv)
{
  const std::string what = argc > 1 ? argv[1] : "";
  std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (what == "sha256") {
    std::cout << mlmd::sha256_hex(in.data(), in.size());
  } else if (what == "sha256-pieces") {    // the same bytes fed in pieces of 1, 2, 3, ... bytes
    mlmd::Sha256 h;
    size_t at = 0;
    for (size_t n = 1; at < in.size(); n++) {
      const size_t take = std::min(n, in.size() - at);
      h.update(in.data() + at, take);
      at += take;
    }
    std::cout << h.hexdigest();
  } else if (what == "first_line") {
    std::cout << mlmd::first_line(in);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    d = tmp_path_factory.mktemp("harness")
    (d / "main.cpp").write_text(HARNESS)
    exe = d / "harness"
    sources = [str(d / "main.cpp"), str(PLUGIN_SRC / "sha256.cpp")]
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(PLUGIN_SRC), *sources, "-o", str(exe)], check=True)
    return exe


def _call(exe: Path, what: str, data: bytes) -> str:
    return subprocess.run([str(exe), what], input=data, capture_output=True, check=True).stdout.decode()


def test_sha256_matches_hashlib(harness):
    rng = np.random.default_rng(0)
    sizes = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 1_000_003]
    for n in sizes:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _call(harness, "sha256", data) == hashlib.sha256(data).hexdigest(), n
        assert _call(harness, "sha256-pieces", data) == hashlib.sha256(data).hexdigest(), n
    assert _call(harness, "sha256", b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("plain reason", "plain reason"),
        ("first\nsecond", "first"),
        ("\n\n  the reason  \nmore", "the reason"),
        ("", "(no reason given)"),
        (" \n\t\n", "(no reason given)"),
        ("The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript (most recent call "
         "last):\n  File \"code/__torch__.py\", line 9\nbuiltins.ValueError: atoms 3 and 7 are 0.01 Å apart\n",
         "atoms 3 and 7 are 0.01 Å apart"),
    ],
)
def test_first_line_never_gives_an_empty_reason(harness, text, reason):
    assert _call(harness, "first_line", text.encode()) == reason


def test_neigh_modify_exclude_of_model_pairs_is_refused(model_files, tmp_path):
    """`neigh_modify exclude` removes pairs from the neighbour list like special_bonds: refused when it can touch
    two atoms of the style; an exclusion between another style's types runs and leaves the model's energy as is."""
    model = model_files["float64"]
    atoms = water_box(2, seed=5)
    names = L.model_elements(model)  # type 1 = H, type 2 = O
    with pytest.raises(L.LammpsError, match=r"neigh_modify exclude type 1 2.*another energy"):
        L.compute(atoms, model, workdir=tmp_path / "type", extra_lines=["neigh_modify exclude type 1 2"])
    with pytest.raises(L.LammpsError, match=r"exclude group.*both of its groups"):
        L.compute(atoms, model, workdir=tmp_path / "group",
                  extra_lines=["group hyd type 1", "group oxy type 2", "neigh_modify exclude group hyd oxy"])
    # H as NULL (another style's type): excluding H-H pairs does not touch the model's O-O graph
    is_o = np.array([s == "O" for s in atoms.get_chemical_symbols()])
    ref = MLMDCalculator(model)
    oxygens = atoms[is_o]
    oxygens.calc = ref
    res = L.compute(atoms, model, workdir=tmp_path / "null", elements=names,
                    pair_lines_override=[f"pair_style hybrid/overlay mlmd {model} zero 3.5",
                                         "pair_coeff * * mlmd NULL O", "pair_coeff * * zero"],
                    extra_lines=["neigh_modify exclude type 1 1"])
    assert abs(res.energy - oxygens.get_potential_energy()) < 1e-10 * abs(res.energy)
