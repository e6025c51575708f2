"""Fuzzed `pair_style mlmd` / `pair_coeff` lines (hypothesis): every malformed line ends in a clear LAMMPS error,
never a crash or a hang; every accepted one gives a finite energy.

The inputs run in a worker process (tests/fuzz/lammps_fuzz_worker.py), one fresh LAMMPS instance each, so that a
crash shows up here as a dead worker and a hang as a silent one. MLMD_FUZZ_EXAMPLES sets the number of cases.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, water_box

pytestmark = pytest.mark.lammps

N_EXAMPLES = int(os.environ.get("MLMD_FUZZ_EXAMPLES", "30"))
TIMEOUT_S = 120.0  # per input: one model load and `run 0` on 3 atoms take well under a second


class Worker:
    """The worker process, started again after it dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.timeout = TIMEOUT_S

    def start(self) -> None:
        path = os.pathsep.join([str(REPO), str(REPO / "tests"), str(REPO / "tests" / "fuzz")])
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fuzz" / "lammps_fuzz_worker.py")], cwd=REPO,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def run(self, lines: list[str]) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(lines) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.stop()
            pytest.fail(f"LAMMPS hung (no answer in {self.timeout} s) on:\n" + "\n".join(lines))
        reply = self.proc.stdout.readline()
        if not reply:
            code = self.proc.wait()
            self.proc = None
            pytest.fail(f"LAMMPS crashed (worker exit status {code}) on:\n" + "\n".join(lines))
        return json.loads(reply)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory, model_files) -> dict[str, Path]:
    from mlmd.engines import lammps as L

    d = tmp_path_factory.mktemp("fuzz_lammps")
    L.write_data(water_box(1, seed=0), d / "data.lmp", ["H", "O"])  # types 1 = H, 2 = O
    good = model_files["float64"]
    (d / "truncated.pt").write_bytes(good.read_bytes()[:5000])
    spaced = d / "with space"
    spaced.mkdir()
    (spaced / "model.pt").write_bytes(good.read_bytes())
    return {"data": d / "data.lmp", "good": good, "truncated": d / "truncated.pt", "dir": d,
            "spaced": spaced / "model.pt"}


def _input(draw, files: dict[str, Path]) -> list[str]:
    """Input lines around `pair_style mlmd` / `pair_coeff`, mostly near-valid (the interesting cases): the right
    shape with a wrong word, a wrong count, junk, quotes, LAMMPS's $ and # characters, hybrid/overlay."""
    paths = [str(files["good"]), f'"{files["spaced"]}"', str(files["truncated"]), str(files["dir"]),
             str(files["data"]), str(files["dir"] / "missing.pt")]
    elements = ["H", "O", "NULL", "C", "h", "*", "1", "2", "0", "-1", "1*2", "mlmd", "zero", "''", '"H"']
    junk = st.text(alphabet="abcHO*NUL0123456789-.eE/_:\"'$#{}&", min_size=1, max_size=8).filter(
        lambda w: w.strip() and w.strip() == w)
    word = st.one_of(st.sampled_from(paths + elements), junk, st.floats(allow_nan=True).map(repr),
                     st.integers(-5, 5).map(str))
    good_style = f"pair_style mlmd {files['good']}"

    def style_line() -> str:
        if draw(st.booleans()):
            return f"pair_style mlmd {draw(st.sampled_from(paths))}" + "".join(
                " " + w for w in draw(st.lists(word, max_size=1)))
        return "pair_style mlmd " + " ".join(draw(st.lists(word, max_size=3)))

    def coeff_line(prefix: str = "") -> str:
        start = "* * " if draw(st.booleans()) else ""
        tokens = draw(st.lists(st.one_of(st.sampled_from(elements), word), max_size=4))
        return f"pair_coeff {start}{prefix}" + " ".join(tokens)

    kind = draw(st.sampled_from(["style", "coeff", "both", "hybrid"]))
    if kind == "hybrid":
        style = draw(st.sampled_from([f"pair_style hybrid/overlay mlmd {files['good']} zero 3.0",
                                      f"pair_style hybrid/overlay mlmd {files['good']}"]))
        coeffs = ["pair_coeff * * zero", coeff_line(draw(st.sampled_from(["mlmd ", ""])))]
    else:
        style = style_line() if kind in ("style", "both") else good_style
        coeffs = ["pair_coeff * * H O"]
        if kind in ("coeff", "both"):
            coeffs = [coeff_line() for _ in range(draw(st.integers(1, 2)))]
    head = ["units metal", "atom_style atomic", "atom_modify map array", "newton on", f"read_data {files['data']}"]
    return [*head, style, *coeffs, "run 0"]


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pair_style_and_pair_coeff_lines(worker, files, data):
    lines = _input(data.draw, files)
    reply = worker.run(lines)
    if reply["ok"]:
        energy = reply["energy"]
        assert energy == energy and abs(energy) < 1e6, lines  # accepted input: a finite energy
    else:
        msg = reply["error"]
        assert msg and "\n" not in msg.strip().splitlines()[0], lines
        assert len(msg) < 2000 and "Traceback" not in msg, (lines, msg)


def test_the_worker_reports_crashes_and_hangs(worker, files):
    """The harness itself: a valid input runs, a malformed one gives LAMMPS's error, a worker killed mid-input is
    reported as a crash and one that does not answer as a hang (pytest's Failed, not a pass); then it restarts."""
    head = ["units metal", "atom_style atomic", "atom_modify map array", "newton on", f"read_data {files['data']}"]
    ok = worker.run([*head, f"pair_style mlmd {files['good']}", "pair_coeff * * H O", "run 0"])
    assert ok["ok"] and abs(ok["energy"]) > 0
    bad = worker.run([*head, f"pair_style mlmd {files['good']}", "pair_coeff * * H C", "run 0"])
    assert not bad["ok"] and "element 'C' (atom type 2) is not in model" in bad["error"]
    assert worker.proc is not None
    with pytest.raises(pytest.fail.Exception, match="LAMMPS crashed"):
        worker.run([*head, f"shell kill -9 {worker.proc.pid}"])  # LAMMPS's shell command kills the worker
    worker.timeout = 3.0
    try:
        with pytest.raises(pytest.fail.Exception, match="LAMMPS hung"):
            worker.run([*head, "shell sleep 20"])
    finally:
        worker.timeout = TIMEOUT_S
    assert worker.run([*head, f"pair_style mlmd {files['good']}", "pair_coeff * * H O", "run 0"])["ok"]


# ------------------------------------------------------------------------------- edits of the training domain

DOMAIN_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(-1e3, 1e3) | st.sampled_from([0.5, 1.0, 1.3, 12.0])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["H-H", "H-O", "O-H", "O-O", "x"]),
                                                                 inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_training_domain_edits_accepted_or_refused_as_in_python(worker, files, domain_model, tmp_path_factory, data):
    """A card whose training_domain record was edited: the plugin accepts it exactly when mlmd's Python loader
    does (then a finite energy), else an error whose first line names the record's field."""
    from conftest import with_card_changes
    from mlmd import keys as K
    from mlmd.deploy.load import load_model, read_card

    raw = read_card(domain_model).training_domain.to_json()
    target = raw
    if data.draw(st.booleans()):
        target = raw["pair_min_distance"]
        key = data.draw(st.sampled_from(["H-H", "H-O", "O-H", "O-O", "H-C", "", "H-O-H"]))
    else:
        key = data.draw(st.sampled_from([*sorted(raw), "volume_per_atom", "max_force_component"]))
    target[key] = data.draw(DOMAIN_VALUES)
    record = raw if data.draw(st.integers(0, 9)) else data.draw(DOMAIN_VALUES)  # sometimes the whole record
    path = with_card_changes(domain_model, tmp_path_factory.mktemp("dom") / "m.pt",
                             **{K.CARD_TRAINING_DOMAIN: record})
    try:
        load_model(path)
        python_ok = True
    except Exception as err:  # noqa: BLE001  ModelFileError / CardError: both name the field
        python_ok = False
        assert "training_domain" in str(err), err
    head = ["units metal", "atom_style atomic", "atom_modify map array", "newton on", f"read_data {files['data']}"]
    reply = worker.run([*head, f"pair_style mlmd {path}", "pair_coeff * * H O", "run 0"])
    assert reply["ok"] == python_ok, (record, reply)
    if reply["ok"]:
        assert reply["energy"] == reply["energy"]
    else:
        first = reply["error"].strip().splitlines()[0]
        assert "training_domain" in first and len(first) < 2000, (record, first)
