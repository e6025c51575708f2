"""The training domain on the model card and the out-of-domain signal in ASE, OpenMM and `mlmd md`.

References are independent of mlmd.deploy.domain: pair distances from ASE's get_all_distances (minimum image)
of the training structures and of each MD frame, volumes from the cell. The MD runs push one H atom of a water
box straight at its O (everything else at rest), so the first step on which the pair is closer than 0.8 x the
shortest training H-O distance is known from the trajectory itself; the warning must name that step and the two
atoms, once. LAMMPS is in tests/engines/lammps/test_lammps_domain.py.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
from domain_scenario import LIMIT_HO, TRAINING, H, O, approaching_box, first_step_below, shortest_by_pair

from conftest import REPO, water_box, with_card_changes
from mlmd import keys as K
from mlmd.deploy.card import CardError, ModelCard
from mlmd.deploy.domain import TrainingDomain, training_domain
from mlmd.deploy.load import load_model, read_card
from mlmd.engines.ase import MLMDCalculator
from mlmd.engines.domain import DomainWarning, OutOfDomainError

# ------------------------------------------------------------------------------------------------- the card


def test_record_matches_ase_distances_and_round_trips(domain_model):
    box = water_box(2)
    card = read_card(domain_model)
    dom = card.training_domain
    assert dom is not None and dom.n_structures == 1
    assert dom.pair_min_distance == pytest.approx(TRAINING, rel=1e-5)
    v = box.cell.volume / len(box)
    assert dom.volume_per_atom == pytest.approx((v, v), rel=1e-5)
    assert dom.close_factor == 0.8 and dom.volume_factors == (0.8, 1.25)
    assert dom.pair_limit("O", "H", card.elements, card.r_cut) == pytest.approx(LIMIT_HO, rel=1e-5)
    assert ModelCard.from_json(card.to_json()) == card
    assert load_model(domain_model)[1] == card
    from mlmd.deploy.load import describe  # `mlmd info`

    assert "domain          1 structures; shortest pairs (Å) H-H 1.51, H-O 0.957, O-O 2.65; volume/atom 9.93" in \
        describe(card)
    assert "domain          not recorded" in describe(replace(card, training_domain=None))
    # forces and a pair never seen within r_cut: the largest component is kept, the pair is absent
    forces = np.zeros((2, 3))
    forces[1, 2] = -7.5
    far = training_domain([(np.array([1, 8]), np.array([[0, 0, 0], [0, 0, 1.0]]), np.zeros((3, 3)),
                            np.zeros(3, bool), forces)], ["H", "O"], 3.5)
    assert far.pair_min_distance == {"H-O": 1.0} and far.volume_per_atom is None and far.max_force_component == 7.5
    assert far.pair_limit("H", "H", ["H", "O"], 3.5) == pytest.approx(0.8 * 3.5)


@pytest.mark.parametrize("edit, field", [
    ({"pair_min_distance": {"O-H": 1.0}}, "pair_min_distance"),  # not in the species order
    ({"pair_min_distance": {"H-C": 1.0}}, "pair_min_distance"),
    ({"pair_min_distance": {"H-O": 4.0}}, r"pair_min_distance\[H-O\]"),  # beyond r_cut
    ({"pair_min_distance": {"H-O": "x"}}, r"pair_min_distance\[H-O\]"),
    ({"volume_per_atom": [12.0, 9.0]}, "volume_per_atom"),
    ({"volume_per_atom": [9.0]}, "volume_per_atom"),
    ({"close_factor": 1.5}, "close_factor"),
    ({"volume_factors": [1.2, 1.25]}, "volume_factors"),
    ({"max_force_component": -1.0}, "max_force_component"),
])
def test_a_bad_record_is_refused_naming_the_field(domain_model, tmp_path, edit, field):
    raw = read_card(domain_model).training_domain.to_json()
    raw.update(edit)
    bad = with_card_changes(domain_model, tmp_path / "bad.pt", **{K.CARD_TRAINING_DOMAIN: raw})
    with pytest.raises(Exception, match=f"training_domain.{field}"):
        load_model(bad)


def test_old_files_without_the_record_load_and_give_no_signal(model_files):
    old = REPO / "tests" / "data" / "model_mlmd_0.1.0.pt"
    assert read_card(old).training_domain is None
    atoms = water_box(2)
    atoms.positions[H] = atoms.positions[O] + [0.4, 0.0, 0.0]  # far inside any limit, above min_distance
    for model in (old, model_files["float64"]):
        atoms.calc = MLMDCalculator(model)
        assert not atoms.calc.domain.active
        with warnings.catch_warnings():
            warnings.simplefilter("error", DomainWarning)
            atoms.get_forces()
    card = read_card(model_files["float64"])
    assert K.CARD_TRAINING_DOMAIN not in card.to_dict() and ModelCard.from_json(card.to_json()) == card


def test_record_is_a_training_field_and_validated(domain_model):
    card = read_card(domain_model)
    again = replace(card, training_domain=None).with_training({K.CARD_TRAINING_DOMAIN: card.training_domain.to_json()})
    assert again == card
    with pytest.raises(CardError, match="training_domain.close_factor"):
        replace(card, training_domain=TrainingDomain(close_factor=0.0)).validate()


# ---------------------------------------------------------------------------------------------------- ASE


def ase_run(model, steps: int, mode: str = "warn", atoms=None):
    """VelocityVerlet (0.5 fs); returns (the positions of every step, the DomainWarnings)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = approaching_box() if atoms is None else atoms
    atoms.calc = MLMDCalculator(model, domain=mode)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    frames: list[np.ndarray] = []
    dyn.attach(lambda: frames.append(atoms.positions.copy()), interval=1)  # step 0, then after each step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dyn.run(steps)
    return frames, [w for w in caught if issubclass(w.category, DomainWarning)], atoms


def test_ase_warns_once_naming_the_step_and_the_atoms(domain_model):
    frames, caught, atoms = ase_run(domain_model, 16)
    step = first_step_below(frames, atoms.cell.array)
    assert step > 2  # it started inside
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert f"ASE MD step {step} " in msg and "atoms 0 (O) and 1 (H)" in msg, msg
    assert f"closer than {LIMIT_HO:.3f} Å" in msg and f"{TRAINING['H-O']:.3f} Å" in msg
    assert atoms.calc.domain.found in msg


def test_ase_stop_stops_at_that_step(domain_model):
    frames, _, atoms = ase_run(domain_model, 16)
    step = first_step_below(frames, atoms.cell.array)
    with pytest.raises(OutOfDomainError, match=f"ASE MD step {step} .*atoms 0 \\(O\\) and 1 \\(H\\).*stopped"):
        ase_run(domain_model, 16, mode="stop")


def test_ase_in_domain_run_is_silent_and_off_checks_nothing(domain_model):
    atoms = water_box(2)  # the training structure, at rest: stays within the limits for a few steps
    frames, caught, _ = ase_run(domain_model, 4, atoms=atoms)
    assert caught == []
    assert min(shortest_by_pair(atoms).values()) > 0.9
    frames, caught, atoms = ase_run(domain_model, 16, mode="off")
    assert caught == [] and atoms.calc.domain.found is None


def test_tiny_limits_still_check_pairs(domain_model, tmp_path):
    """A card whose limits are far below vesin's smallest cutoff (found by the card fuzz: close_factor 5e-123)
    loads, stays silent for a normal box and still flags two atoms that sit closer than the limit."""
    path = with_card_changes(domain_model, tmp_path / "tiny.pt",
                             **{K.CARD_TRAINING_DOMAIN: {"pair_min_distance": {}, "close_factor": 5e-123,
                                                         "n_structures": 1}})
    atoms = water_box(2)
    atoms.calc = MLMDCalculator(path)
    assert np.isfinite(atoms.get_potential_energy()) and atoms.calc.domain.found is None
    checker = atoms.calc.domain
    pos = atoms.positions.copy()
    pos[1] = pos[0]  # an exact overlap: 0 Å is below any positive limit
    assert "atoms 0 (O) and 1 (H) are 0.000 Å apart" in checker.problem(pos, atoms.numbers, atoms.cell.array,
                                                                         atoms.pbc)


def test_ase_cell_outside_the_training_volumes(domain_model):
    v0 = water_box(2).cell.volume / 24
    for scale, inside in ((1.07, True), (0.94, True), (1.09, False), (0.92, False)):  # volume x scale^3
        atoms = water_box(2)
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)  # bonds scale too, but stay above their limits
        atoms.calc = MLMDCalculator(domain_model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            atoms.get_potential_energy()
        v = v0 * scale**3
        assert (0.8 * v0 <= v <= 1.25 * v0) == inside
        msgs = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
        assert msgs == [] if inside else ("volume per atom is" in msgs[0] and "ASE MD step 0 " in msgs[0]), msgs


# ------------------------------------------------------------------------------------------------- OpenMM


def openmm_run(model, steps: int, mode: str = "warn"):
    """OpenMM Verlet (0.5 fs) with the DomainReporter every step; (positions of every step in Å, the warnings)."""
    import openmm
    from ase import units
    from openmm import app, unit

    from mlmd.engines.openmm import MLMDPotential, topology_from_atoms
    from mlmd.engines.openmm.reporters import DomainReporter

    atoms = approaching_box(2)  # OpenMM wants a box twice the cutoff
    top, positions = topology_from_atoms(atoms)
    system = MLMDPotential(model).createSystem(top)
    sim = app.Simulation(top, system, openmm.VerletIntegrator(0.5 * unit.femtosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(positions)
    v_nm_ps = atoms.get_velocities() * units.fs * 1000 / 10  # Å/fs -> nm/ps
    sim.context.setVelocities(v_nm_ps * unit.nanometer / unit.picosecond)
    sim.reporters.append(DomainReporter(model, 1, top, mode=mode))
    frames = [atoms.positions.copy()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            sim.step(1)
            st = sim.context.getState(getPositions=True)
            frames.append(np.asarray(st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)))
    return frames, [w for w in caught if issubclass(w.category, DomainWarning)], atoms.cell.array


@pytest.mark.openmm
def test_openmm_reporter_warns_once_and_stop_stops(domain_model):
    frames, caught, cell = openmm_run(domain_model, 16)
    step = first_step_below(frames, cell)
    assert step > 2 and len(caught) == 1
    msg = str(caught[0].message)
    assert f"OpenMM MD step {step}:" in msg and "atoms 0 (O) and 1 (H)" in msg, msg
    with pytest.raises(OutOfDomainError, match=f"OpenMM MD step {step}:.*atoms 0 \\(O\\) and 1 \\(H\\)"):
        openmm_run(domain_model, 16, mode="stop")


# ------------------------------------------------------------------------------------------------- mlmd md


@pytest.mark.parametrize("engine", ["ase", pytest.param("openmm", marks=pytest.mark.openmm)])
def test_mlmd_md_warns_by_default_and_stops_with_the_flag(domain_model, tmp_path, engine):
    """`mlmd md` on a squeezed box (volume per atom 0.7x the training one): a warning naming step 0 by default,
    exit status 2 with --domain stop, silence on the training box itself."""
    import ase.io

    from mlmd.cli import main

    squeezed = water_box(2).repeat(2)
    squeezed.set_cell(squeezed.cell * 0.7 ** (1 / 3), scale_atoms=True)
    ase.io.write(tmp_path / "squeezed.xyz", squeezed)
    ase.io.write(tmp_path / "train.xyz", water_box(2).repeat(2))
    base = [str(domain_model), "--engine", engine, "--steps", "2", "--log-every", "1", "--temperature", "10"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["md", *base, "--structure", str(tmp_path / "squeezed.xyz")]) == 0
        assert main(["md", *base, "--structure", str(tmp_path / "train.xyz")]) == 0
    msgs = [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]
    assert len(msgs) == 1 and "MD step 0" in msgs[0] and "volume per atom" in msgs[0], msgs
    assert main(["md", *base, "--structure", str(tmp_path / "squeezed.xyz"), "--domain", "stop"]) == 2


def test_volume_is_not_checked_for_part_of_a_box(domain_model):
    """ML/MM: the model's atoms share the box with others, so their volume per atom says nothing."""
    from mlmd.engines.domain import DomainMonitor

    monitor = DomainMonitor(read_card(domain_model))
    atoms = water_box(2)
    atoms.set_cell(atoms.cell * 0.92, scale_atoms=True)  # volume 0.78x, bonds above their limits
    args = (atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    assert "volume per atom is" in monitor.problem(*args)
    assert monitor.problem(*args, all_atoms=False) is None
    atoms.positions[H] = atoms.positions[O] + [0.5, 0.0, 0.0]
    assert "atoms 0 (O) and 1 (H) are 0.500 Å apart" in monitor.problem(atoms.positions, atoms.numbers,
                                                           atoms.cell.array, atoms.pbc, all_atoms=False)


def test_repackage_adds_the_record_from_the_files_trained_on(tmp_path, capsys):
    """`mlmd package OLD.pt -o NEW.pt --training-data ...` for a file packaged without the record: the files are
    accepted only when their SHA-256 is the card's; the record is then the one of those structures (its H-O
    distance checked against ASE over every structure, minimum image)."""
    import ase.io

    from mlmd.cli import main

    water = REPO / "inputs" / "water"
    old = tmp_path / "old.pt"
    with_card_changes(water / "water_model.pt", old, training_domain=None)  # as packaged before the record
    assert read_card(old).training_domain is None
    data = [water / "water_gfn2.xyz", water / "refine" / "nve_mild.xyz"]
    assert main(["package", str(old), "-o", str(tmp_path / "x.pt"), "--training-data", str(data[0]),
                 "--no-validate"]) != 0
    assert re.search(r"not the files .* was trained on", capsys.readouterr().err)
    new = tmp_path / "new.pt"
    assert main(["package", str(old), "-o", str(new), "--training-data", *map(str, data), "--no-validate"]) == 0
    rec = read_card(new).training_domain
    frames = [a for path in data for a in ase.io.read(path, ":")]
    assert rec.n_structures == len(frames)
    assert rec.pair_min_distance["H-O"] == pytest.approx(min(shortest_by_pair(a)["H-O"] for a in frames), rel=1e-5)
