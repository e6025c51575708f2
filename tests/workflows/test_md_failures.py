"""A broken MD state stops the run with an error naming the step and the atoms, in every engine.

The scenarios have answers known without the model: two O atoms flying head-on at 100 Å/ps each, 1.03 Å
apart, close by 0.1 Å per 0.5 fs step, so the configuration of step 10 is the first closer than 0.1 Å (0.03 Å;
the random-weight model's forces change that by ~1e-4 Å). A model whose energy scale is NaN gives NaN for every
atom; a model with energy sqrt(r - 0.5) per pair (0 below 0.5 Å) has a finite energy and NaN forces for the pair
closer than 0.5 Å only. Rules: mlmd/engines/checks.py and plugins/lammps/pair_mlmd.cpp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units

from conftest import make_potential, water_box
from mlmd import keys as K
from mlmd.deploy.card import ModelCard
from mlmd.deploy.checksum import weights_sha256
from mlmd.deploy.export import package
from mlmd.engines.checks import MDError

V_HEAD_ON = 100.0  # Å/ps, each atom
FIRST_TOO_CLOSE = 10  # the step whose configuration is first closer than 0.1 Å


def head_on_pair() -> Atoms:
    return Atoms("OO", positions=[[5.0, 5.0, 5.0], [6.03, 5.0, 5.0]], cell=[12.0, 12.0, 12.0], pbc=True)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    pot = make_potential(dtype=torch.float64)
    with torch.no_grad():
        pot.scale.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan_scale.pt"
    package(pot, path)
    return path


class SqrtPairs(torch.nn.Module):
    """local_energies only (what the LAMMPS plugin calls): E_i = sum_j sqrt(r_ij - 0.5) for r_ij > 0.5 Å."""

    def __init__(self) -> None:
        super().__init__()
        self.min_distance = 0.1
        self.atomic_numbers = [1, 8]  # what its card says (the plugin cross-checks the card against the module)
        self.r_cut = 3.0

    @torch.jit.export
    def local_energies(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                       n_local: int) -> torch.Tensor:
        r = torch.linalg.norm(edge_vectors, dim=1)
        e = torch.where(r > 0.5, torch.sqrt(r - 0.5), torch.zeros_like(r))  # sqrt'(<0) = NaN reaches the force
        return torch.zeros(species.shape[0], dtype=e.dtype).index_add(0, edge_index[0], e)[:n_local]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def nan_force_model(tmp_path_factory) -> Path:
    module = torch.jit.script(SqrtPairs())
    card = ModelCard(elements=["H", "O"], atomic_numbers=[1, 8], r_cut=3.0, n_layers=1, dtype="float64",
                     mlmd_version="test", entry_points=[K.ENTRY_LOCAL_ENERGIES],
                     weights_sha256=weights_sha256(module)).validate()
    path = tmp_path_factory.mktemp("sqrt") / "sqrt_pairs.pt"
    torch.jit.save(module, str(path), _extra_files={K.META_FILE: card.to_json()})
    return path


# ------------------------------------------------------------------------------------------------------ LAMMPS

LAMMPS_RUN = """\
units           metal
atom_style      atomic
atom_modify     map array
newton          on
read_data       {data}
pair_style      mlmd {model}
pair_coeff      * * H O
timestep        0.0005
fix             1 all nve
{extra}
run             40
"""


@pytest.fixture(scope="module")
def lammps_dir(tmp_path_factory) -> Path:
    from mlmd.engines import lammps as L

    d = tmp_path_factory.mktemp("lmp_fail")
    L.write_data(head_on_pair(), d / "pair.lmp", ["H", "O"])
    L.write_data(water_box(2, seed=8), d / "water.lmp", ["H", "O"])
    close = water_box(2, seed=8)
    close.positions[3] = close.positions[0] + [0.3, 0.0, 0.0]  # atom IDs 1 and 4: 0.3 Å apart
    L.write_data(close, d / "close.lmp", ["H", "O"])
    return d


def _lammps_error(directory: Path, name: str, **values) -> str:
    from mlmd.engines import lammps as L

    script = directory / f"in.{name}"
    script.write_text(LAMMPS_RUN.format(**values))
    with pytest.raises(L.LammpsError) as err:
        L.run_lammps(script, directory)
    return str(err.value)


@pytest.mark.lammps
def test_lammps_atoms_collapsing(lammps_dir, model_files):
    v = V_HEAD_ON
    msg = _lammps_error(lammps_dir, "collide", data="pair.lmp", model=model_files["float64"],
                        extra=f"group a id 1\ngroup b id 2\nvelocity a set {v} 0 0\nvelocity b set {-v} 0 0")
    assert f"step {FIRST_TOO_CLOSE}: atoms 1 and 2 are 0.03" in msg and "closer than 0.1 Å" in msg


@pytest.mark.lammps
def test_lammps_non_finite_energy_and_forces(lammps_dir, model_files, nan_model, nan_force_model):
    msg = _lammps_error(lammps_dir, "nan_energy", data="water.lmp", model=nan_model, extra="reset_timestep 1234")
    assert "step 1234: the model gave a non-finite energy for atom ID(s) 1 2 3 4 5 6 7 8 (and 16 more)" in msg
    msg = _lammps_error(lammps_dir, "nan_force", data="close.lmp", model=nan_force_model, extra="")
    assert "step 0: the model gave non-finite forces between atom ID(s) 1 4 (" in msg


@pytest.mark.lammps
def test_lammps_runaway_atom(lammps_dir, model_files):
    """8000 Å/ps x 0.5 fs = 4 Å per step, more than the 3.5 Å cutoff."""
    msg = _lammps_error(lammps_dir, "fast", data="water.lmp", model=model_files["float64"],
                        extra="group a id 5\nvelocity a set 8000 0 0")
    assert "step 0: atom ID(s) 5 move up to 4 Å per time step" in msg and "further than the model's cutoff" in msg


@pytest.mark.lammps
def test_lammps_atoms_flying_apart_is_not_an_error(tmp_path, model_files):
    """Two atoms leaving each other (non-periodic, shrink-wrapped box) run to the end; beyond the cutoff each
    has the free-atom energy (from the ASE calculator) and no force."""
    from mlmd.engines import lammps as L
    from mlmd.engines.ase import MLMDCalculator

    pair = head_on_pair()
    pair.pbc = False
    L.write_data(pair, tmp_path / "apart.lmp", ["H", "O"])
    v = V_HEAD_ON
    script = tmp_path / "in.apart"
    script.write_text(LAMMPS_RUN.replace("atom_modify", "boundary        s s s\natom_modify").format(
        data="apart.lmp", model=model_files["float64"],
        extra=f"group a id 1\ngroup b id 2\nvelocity a set {-v} 0 0\nvelocity b set {v} 0 0\n"
        "thermo_style custom step pe\nthermo_modify format float %.15g\nthermo 40\nneighbor 1.0 nsq"))
    log = L.run_lammps(script, tmp_path)
    pe = float(log.split("Loop time")[0].strip().splitlines()[-1].split()[1])
    free = Atoms("O")
    free.calc = MLMDCalculator(model_files["float64"])
    assert abs(pe - 2 * free.get_potential_energy()) < 1e-12 * abs(pe)


# -------------------------------------------------------------------------------------------------------- ASE


def test_ase_atoms_collapsing(model_files):
    from ase.md.verlet import VelocityVerlet

    from mlmd.engines.ase import MLMDCalculator
    from mlmd.md import advance

    atoms = head_on_pair()
    atoms.calc = MLMDCalculator(model_files["float64"])
    atoms.set_velocities(np.array([[V_HEAD_ON, 0, 0], [-V_HEAD_ON, 0, 0]]) * units.Ang / (1000 * units.fs))
    with pytest.raises(MDError, match=rf"ASE MD stopped at step {FIRST_TOO_CLOSE}: atoms 0 and 1 are 0.03\d* Å"):
        advance(VelocityVerlet(atoms, 0.5 * units.fs), 40, atoms.calc.r_cut)


def test_ase_non_finite_position_and_energy(model_files, nan_model, tmp_path):
    from ase.md.verlet import VelocityVerlet

    from mlmd.engines.ase import MLMDCalculator
    from mlmd.md import advance, run_md

    atoms = water_box(2, seed=3)
    atoms.positions[3, 1] = np.nan
    atoms.calc = MLMDCalculator(model_files["float64"])
    with pytest.raises(MDError, match=r"ASE MD stopped at step 0: atom\(s\) 3 have a non-finite position"):
        advance(VelocityVerlet(atoms, 0.5 * units.fs), 5, atoms.calc.r_cut)
    water_box(2, seed=3).write(tmp_path / "w.xyz")
    with pytest.raises(MDError, match=r"step 0: the model gave a non-finite energy for atom\(s\) 0, 1, 2, 3, 4, 5, "
                                      r"6, 7 \(and 16 more\)"):
        run_md(nan_model, engine="ase", structure=tmp_path / "w.xyz", steps=5, log_every=5)


def test_cli_md_reports_the_failure(nan_model, tmp_path, capsys):
    from mlmd.cli import main

    water_box(2, seed=3).write(tmp_path / "w.xyz")
    assert main(["md", str(nan_model), "--structure", str(tmp_path / "w.xyz"), "--steps", "5"]) == 2
    assert "mlmd md: error: ASE MD stopped at step 0: the model gave a non-finite energy" in capsys.readouterr().err


def test_ase_atoms_flying_apart_is_not_an_error(model_files):
    from ase.md.verlet import VelocityVerlet

    from mlmd.engines.ase import MLMDCalculator
    from mlmd.md import advance

    atoms = head_on_pair()
    atoms.pbc = False
    atoms.calc = MLMDCalculator(model_files["float64"])
    atoms.set_velocities(np.array([[-V_HEAD_ON, 0, 0], [V_HEAD_ON, 0, 0]]) * units.Ang / (1000 * units.fs))
    advance(VelocityVerlet(atoms, 0.5 * units.fs), 40, atoms.calc.r_cut)
    assert atoms.get_distance(0, 1) > 4.5  # beyond the 3.5 Å cutoff, no error
    assert np.abs(atoms.get_forces()).max() == 0.0


# ----------------------------------------------------------------------------------------------------- OpenMM


def _openmm_pair_simulation(model: Path):
    import openmm
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms

    top, positions = topology_from_atoms(head_on_pair())
    system = MLMDPotential(model).createSystem(top, removeCMMotion=False)
    sim = app.Simulation(top, system, openmm.VerletIntegrator(0.5 * unit.femtosecond),
                         openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(positions)
    v = V_HEAD_ON / 10  # nm/ps
    sim.context.setVelocities(np.array([[v, 0, 0], [-v, 0, 0]]) * unit.nanometer / unit.picosecond)
    return sim


@pytest.mark.openmm
def test_openmm_atoms_collapsing_and_non_finite_positions(model_files):
    from openmm import unit

    from mlmd.engines.openmm import checked_state, checked_step

    sim = _openmm_pair_simulation(model_files["float64"])
    with pytest.raises(MDError, match=rf"OpenMM MD stopped at step {FIRST_TOO_CLOSE}: atoms 0 and 1 are 0.03\d* Å"):
        checked_step(sim, 40, 3.5)
    # after step(10) the configuration of step 10 has not been evaluated yet: asking for its energy does it
    sim = _openmm_pair_simulation(model_files["float64"])
    sim.step(FIRST_TOO_CLOSE)
    with pytest.raises(MDError, match=rf"OpenMM MD stopped at step {FIRST_TOO_CLOSE}: atoms 0 and 1 are 0.03\d* Å"):
        checked_state(sim, 3.5, getEnergy=True)
    sim = _openmm_pair_simulation(model_files["float64"])
    sim.step(3)
    sim.context.setPositions(np.array([[0.5, 0.5, 0.5], [np.nan, 0.5, 0.5]]) * unit.nanometer)
    with pytest.raises(MDError, match=r"OpenMM MD stopped at step 3: atom\(s\) 1 have a non-finite position"):
        checked_step(sim, 5, 3.5)
    sim = _openmm_pair_simulation(model_files["float64"])
    sim.context.setVelocities(np.array([[800.0, 0, 0], [0, 0, 0]]) * unit.nanometer / unit.picosecond)
    with pytest.raises(MDError, match=r"step 1: atom\(s\) 0 move up to 4 Å per time step, further than the model's "
                                      r"cutoff \(3.5 Å\)"):
        checked_step(sim, 1, 3.5)


@pytest.mark.openmm
def test_openmm_run_md_non_finite_energy(nan_model, tmp_path):
    from mlmd.md import run_md

    water_box(2, seed=3, spacing=3.6).write(tmp_path / "w.xyz")  # 7.2 Å: at least twice the cutoff
    with pytest.raises(MDError, match=r"OpenMM MD stopped at step 0: .*non-finite energy for atom\(s\) 0, 1, 2"):
        run_md(nan_model, engine="openmm", structure=tmp_path / "w.xyz", steps=5, log_every=5)
