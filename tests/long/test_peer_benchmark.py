"""The peer benchmark's own bookkeeping: the split it hands to MACE/NequIP is mlmd's, labels unchanged, and the
LAMMPS log and /usr/bin/time parsers read what those tools print."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _frames(n: int) -> list[Atoms]:
    rng = np.random.default_rng(3)
    frames = []
    for k in range(n):
        a = Atoms("OH2", positions=rng.uniform(0, 4, (3, 3)), cell=np.eye(3) * 6.0, pbc=True)
        a.info["energy"] = -10.0 - k  # frame k is recognisable by its energy
        a.arrays["forces"] = rng.normal(size=(3, 3))
        a.info["stress"] = rng.normal(size=6) * 1e-3
        frames.append(a)
    return frames


def test_split_export_is_mlmds_split_with_labels_kept(tmp_path):
    import ase.io

    from mlmd.data.structures import read_structures, split_indices

    frames = _frames(20)
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    (tmp_path / "c.yaml").write_text("data:\n  path: d.xyz\n  val_fraction: 0.2\n  test_fraction: 0.25\n"
                                     "  split_seed: 7\n")
    paths = _module("peer_split").export_split(tmp_path / "c.yaml", tmp_path / "out")
    split = split_indices(20, 0.2, 0.25, 7)
    ref = read_structures(tmp_path / "d.xyz")
    for name, idx in split.items():
        got = ase.io.read(paths[name], index=":")
        assert [round(-a.info["REF_energy"] - 10.0) for a in got] == idx
        for a, i in zip(got, idx):
            assert "energy" not in a.info and a.calc is None  # REF_ keys: no calculator results for ASE to take
            np.testing.assert_allclose(a.positions, ref[i].positions)
            np.testing.assert_allclose(a.arrays["REF_forces"], ref[i].forces)
            np.testing.assert_allclose(np.asarray(a.info["REF_stress"]).reshape(3, 3), ref[i].stress)
    assert sorted(sum(split.values(), [])) == list(range(20))


def test_thermo_rows_reads_the_last_table():
    log = """Step Temp
         0   1.0
         5   2.0
Loop time of 1 on 1 procs for 5 steps with 3 atoms
Step Temp CPU model_s bridge_s
         0   300   0      0     0
         1   301   0.5    0.4   0.01
         2   302   1.0    0.8   0.02
Loop time of 1.0 on 1 procs for 2 steps with 3 atoms
"""
    head, rows = _module("peer_worker").thermo_rows(log)
    assert head == ["Step", "Temp", "CPU", "model_s", "bridge_s"]
    assert rows == [[0, 300, 0, 0, 0], [1, 301, 0.5, 0.4, 0.01], [2, 302, 1.0, 0.8, 0.02]]


def test_time_v_adds_the_parts_of_a_resumed_training(tmp_path):
    summary = ("\tUser time (seconds): {u}\n\tSystem time (seconds): {s}\n"
               "\tElapsed (wall clock) time (h:mm:ss or m:ss): {w}\n\tMaximum resident set size (kbytes): {m}\n"
               "\tExit status: 0\n")
    (tmp_path / "train_part1.log").write_text("epoch 1\n" + summary.format(u=100, s=10, w="1:02:03", m=2048))
    (tmp_path / "train.log").write_text("epoch 2\n" + summary.format(u=50, s=5, w="2:30.5", m=1024))
    out = _module("peers").time_v(tmp_path / "train.log")
    assert out["cpu_s"] == 165.0
    assert out["wall_s"] == 3723.0 + 150.5
    assert out["peak_rss_mb"] == 2.0 and out["parts"] == 2


def test_fair_order_runs_every_pair_once_and_rotates():
    fair = _module("peer_fair")
    routes = ["a", "b", "c"]
    rounds = [fair.order(k, routes) for k in range(3)]
    for got in rounds:
        assert sorted(got) == sorted((al, r) for al in fair.ALLOCATORS for r in routes)
    assert len({got[0] for got in rounds}) == 3  # a different first process in each round


def _rec(route: str, alloc: str, atoms: int, cpu: float) -> dict:
    return {"route": route, "allocator": alloc, "atoms": atoms, "step_cpu_s": cpu, "time": "t",
            "uptime": " 08:00:00 up 1:00,  0 user,  load average: 2.50, 2.00, 1.00"}


def test_fair_report_takes_each_routes_minimum_and_names_the_ratio(tmp_path):
    import json

    report = _module("peer_fair_report")
    recs = [_rec("mlmd LAMMPS, compiled (AOTI)", "keep", 192, cpu) for cpu in (0.02, 0.01, 0.03)]
    recs += [_rec("mlmd OpenMM", "keep", 192, 0.016), _rec("NequIP, AOTInductor", "keep", 192, 0.024),
             _rec("NequIP, AOTInductor", "keep", 192, 0.030), _rec("MACE, eager", "keep", 192, 0.05),
             _rec("MACE, torch.compile", "keep", 192, 0.04), {**_rec("MACE, eager", "keep", 192, 0), "error": "x"}]
    for r in recs:
        r.pop("step_cpu_s") if "error" in r else None
    path = tmp_path / "fair.jsonl"
    head = {"header": True, "parameters": {"mlmd": 1, "nequip": 2, "mace": 3}, "machine": {"cores": 2}}
    path.write_text("\n".join(json.dumps(r) for r in [head, *recs]) + "\n")
    best = report.best(report.load(path)[1])
    assert best[("mlmd LAMMPS, compiled (AOTI)", "keep", 192)]["step_cpu_s"] == 0.01
    assert best[("mlmd LAMMPS, compiled (AOTI)", "keep", 192)]["processes"] == 3
    assert report.fastest(best, "MACE", "keep", 192) == ("MACE, torch.compile", 192 / 0.04)
    text = "\n".join(report.section(path))
    # 0.024 / 0.01 = 2.4x NequIP (target 2x met); 0.04 / 0.01 = 4.0x MACE (met); the failed process is listed
    assert "**2.40x** (mlmd LAMMPS, compiled (AOTI) / NequIP, AOTInductor; target met)" in text
    assert "**4.00x** (mlmd LAMMPS, compiled (AOTI) / MACE, torch.compile; target met)" in text
    assert "MACE, eager (keep, 192 atoms): x" in text and "load average 2.5-2.5" in text
    assert "plain glibc" in text and "no data" in text  # no glibc records: said so, no NaN ratio
    recs[0]["step_cpu_s"] = recs[1]["step_cpu_s"] = recs[2]["step_cpu_s"] = 0.017  # OpenMM now the fastest
    path.write_text("\n".join(json.dumps(r) for r in [head, *recs]) + "\n")
    text = "\n".join(report.section(path))
    assert "**1.50x** (mlmd OpenMM / NequIP, AOTInductor; 1.33x short of 2x)" in text and "nan" not in text


def test_fair_report_gives_each_thread_count_its_own_table(tmp_path):
    """2-thread records get a section of their own (wall and CPU tables, ratios on each); the 1-thread section is
    what it was without them."""
    import json

    report = _module("peer_fair_report")
    head = {"header": True, "parameters": {"mlmd": 1, "nequip": 2, "mace": 3}, "machine": {"cores": 2}}
    one = [_rec("mlmd ASE, compiled (AOTI)", "keep", 192, 0.01), _rec("NequIP, AOTInductor", "keep", 192, 0.03),
           _rec("MACE, torch.compile", "keep", 192, 0.05)]

    def two(route, cpu, wall):
        return {**_rec(route, "keep", 192, cpu), "threads": 2, "step_s": wall}

    # mlmd: 0.012 CPU-s, 0.008 wall-s; NequIP's fastest process by CPU (0.03) is not its fastest by wall (0.02)
    twos = [two("mlmd ASE, compiled (AOTI)", 0.012, 0.008), two("NequIP, AOTInductor", 0.03, 0.024),
            two("NequIP, AOTInductor", 0.036, 0.02), two("MACE, torch.compile", 0.06, 0.032)]
    path = tmp_path / "fair.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [head, *one]) + "\n")
    before = report.section(path)
    with open(path, "a") as fh:
        for r in [{**head, "threads": 2, "command": "python benchmarks/peers.py fair --threads 2"}, *twos]:
            fh.write(json.dumps(r) + "\n")
    after = report.section(path)
    k = after.index("### 2 threads per process, OMP_WAIT_POLICY=PASSIVE")  # rows before the option: PASSIVE
    assert after[:k] == before[:-1] and after[-1] == report.END  # the 1-thread part, word for word
    assert after[k + 2].startswith("**Not a throughput comparison: under OMP_WAIT_POLICY=PASSIVE")
    text = "\n".join(after[k:])
    assert "`python benchmarks/peers.py fair --threads 2`" in text
    assert "| mlmd ASE, compiled (AOTI) | 24,000 |" in text  # 192 / 0.008 s wall
    assert "| mlmd ASE, compiled (AOTI) | 16,000 |" in text  # 192 / 0.012 CPU-s
    assert "| NequIP, AOTInductor | 9,600 |" in text and "| NequIP, AOTInductor | 6,400 |" in text
    # wall: 0.02 / 0.008 = 2.5x NequIP, 0.032 / 0.008 = 4.0x MACE; CPU: 0.03 / 0.012 = 2.5x, 0.06 / 0.012 = 5.0x
    assert "- mlmd / NequIP, AOTInductor (wall): 192: **2.50x**" in text
    assert "- mlmd / MACE (wall): 192: **4.00x**" in text
    assert "- mlmd / MACE (CPU): 192: **5.00x** (mlmd ASE, compiled (AOTI) / MACE, torch.compile; target met)" in text
    assert "plain glibc" not in text  # only the allocator that was run
    # the same thread count with spinning threads: a table of its own, first, without the caveat
    with open(path, "a") as fh:
        for r in [{**head, "threads": 2, "wait_policy": "ACTIVE", "command": "peers.py fair --threads 2"},
                  {**two("mlmd ASE, compiled (AOTI)", 0.011, 0.006), "wait_policy": "ACTIVE"},
                  {**two("NequIP, AOTInductor", 0.02, 0.015), "wait_policy": "ACTIVE"}]:
            fh.write(json.dumps(r) + "\n")
    third = report.section(path)
    ka = third.index("### 2 threads per process, OMP_WAIT_POLICY=ACTIVE")
    kp = third.index("### 2 threads per process, OMP_WAIT_POLICY=PASSIVE")
    assert k == ka < kp and third[kp:] == after[k:]  # the PASSIVE section unchanged, after the ACTIVE one
    active = "\n".join(third[ka:kp])
    assert "Not a throughput comparison" not in active and "OMP_WAIT_POLICY=ACTIVE for all" in active
    assert "- mlmd / NequIP, AOTInductor (wall): 192: **2.50x**" in active  # 0.015 / 0.006
    assert "| mlmd ASE, compiled (AOTI) | 32,000 |" in active and "MACE" not in active.split("|---|")[1]


def test_fair_threads_reach_every_process_and_its_record(tmp_path):
    """--threads 2: the worker gets --threads 2 and threads=2 (its environment), the 2-thread AOTInductor files, and
    the record says 2; one thread calls the worker exactly as before the option."""
    import json

    fair, peers = _module("peer_fair"), _module("peers")
    calls = []

    def worker(peer, args, threads=None, wait_policy=None):
        calls.append((peer, args, threads))
        policies.append(wait_policy)
        return {"step_s": 0.02, "step_cpu_s": 0.03}

    policies = []

    out = tmp_path / "fair.jsonl"
    routes = ["mlmd LAMMPS, compiled (AOTI)", "NequIP, AOTInductor", "MACE, torch.compile"]
    fair.run_fair(tmp_path, out, worker, lambda rep: tmp_path / "box.xyz", routes, [1], 1, threads=2,
                  allocators=("keep",))
    assert len(calls) == 3
    for _, args, threads in calls:
        assert threads == 2 and args[-2:] == ["--threads", "2"] and args[args.index("--allocator") + 1] == "keep"
    model = {peer: args[args.index("--model") + 1] for peer, args, _ in calls}
    assert model["nequip"].endswith("nequip_t2.nequip.pt2") and model["mlmd"].endswith("mlmd_water_t2.pt")
    assert [json.loads(line)["threads"] for line in out.read_text().splitlines()] == [2, 2, 2]
    assert policies == ["PASSIVE"] * 3  # the default, recorded in each row of several threads
    assert [json.loads(line)["wait_policy"] for line in out.read_text().splitlines()] == ["PASSIVE"] * 3
    calls.clear()
    policies.clear()
    fair.run_fair(tmp_path, out, worker, lambda rep: tmp_path / "box.xyz", routes, [1], 1, threads=2,
                  allocators=("keep",), wait_policy="ACTIVE")
    assert policies == ["ACTIVE"] * 3
    assert [json.loads(line)["wait_policy"] for line in out.read_text().splitlines()[-3:]] == ["ACTIVE"] * 3
    calls.clear()
    fair.run_fair(tmp_path, out, worker, lambda rep: tmp_path / "box.xyz", routes[1:2], [1], 1)
    assert [(p, "--threads" in a, t) for p, a, t in calls] == [("nequip", False, None)] * 2  # keep, then glibc
    assert calls[0][1][calls[0][1].index("--model") + 1].endswith("nequip_t1.nequip.pt2")
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["threads"] == 1 and "wait_policy" not in last and policies[-1] is None  # as before the option
    calls.clear()  # a budget: the ASE processes stop their timed steps after it, LAMMPS runs its fixed steps
    fair.run_fair(tmp_path, out, worker, lambda rep: tmp_path / "box.xyz", routes, [1], 1, threads=2,
                  allocators=("keep",), max_s=5.0)
    assert {p: a[a.index("--max-s") + 1] if "--max-s" in a else None for p, a, _ in calls} == {
        "mlmd": None, "nequip": "5.0", "mace": "5.0"}
    env = peers.env_for("nequip", 2)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert peers.env_for("nequip", 2, "ACTIVE")["OMP_WAIT_POLICY"] == "ACTIVE"
    assert peers.env_for("mace")["OMP_NUM_THREADS"] == "1"


def test_worker_timing_stops_at_its_wall_budget():
    import time

    worker = _module("peer_worker")
    wall, cpu = worker.timed(lambda: time.sleep(0.02), 50, 1, max_s=0.05)
    assert 3 <= len(wall) <= 4 and len(cpu) == len(wall)  # 3 calls reach 0.06 s, unless a sleep ran short
    assert len(worker.timed(lambda: None, 7, 0)[0]) == 7  # no budget: every step
    assert len(worker.timed(lambda: time.sleep(0.02), 5, 0, max_s=0.0)[0]) == 3  # never fewer than 3


def test_fair_budget_steps_fit_the_slowest_route():
    fair = _module("peer_fair")
    recs = [{"route": "a", "atoms": 192, "step_s": 0.01}, {"route": "b", "atoms": 192, "step_s": 0.05},
            {"route": "b", "atoms": 192, "step_s": 0.04}, {"route": "c", "atoms": 192, "step_s": 1.0},
            {"route": "a", "atoms": 12288, "step_s": 2.0}, {"route": "b", "atoms": 1536, "error": "x"}]
    got = fair.budget_steps(recs, ["a", "b"], 20.0)  # "c" is not run: its slowness does not count
    assert got[192] == (fair.STEPS[192][0], 500)  # 20 s / 0.04 s, b's fastest process
    assert got[1536] == fair.STEPS[1536]  # no timed row: the defaults
    assert got[12288] == (fair.STEPS[12288][0], 10)  # 20 s / 2 s
    assert fair.budget_steps(recs, ["a"], 0.1) == fair.STEPS  # a short budget: never fewer steps than the defaults


def test_worker_allocator_setting_keeps_large_blocks_off_mmap():
    """--allocator keep must reach a process that never imports mlmd: a 64 MB block then comes from the heap
    (mallinfo2's mmap'd bytes do not grow); glibc leaves malloc's default (mmap for large blocks)."""
    import subprocess

    code = ("import ctypes, importlib.util, os, sys\n"
            f"spec = importlib.util.spec_from_file_location('w', {str(BENCH / 'peer_worker.py')!r})\n"
            "w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)\n"
            "w.set_allocator(sys.argv[1])\n"
            "class Info(ctypes.Structure):\n"
            "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena ordblks smblks hblks hblkhd usmblks fsmblks '\n"
            "                'uordblks fordblks keepcost').split()]\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
            "libc.mallinfo2.restype = Info\n"
            "before = libc.mallinfo2().hblkhd\n"
            "p = libc.malloc(64 << 20)\n"
            "print(libc.mallinfo2().hblkhd - before, os.environ['MLMD_KEEP_MEMORY'])\n")
    out = {}
    for how in ("keep", "glibc"):
        r = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, check=True)
        mapped, env = r.stdout.split()
        out[how] = (int(mapped), env)
    assert out["keep"] == (0, "mallopt")  # the published runs: glibc never trims, for every code alike
    assert out["glibc"][0] >= 64 << 20 and out["glibc"][1] == "0"


def test_cpu_budget_parsing():
    conv = _module("peer_converge")
    assert conv.parse_budget("6") == 360.0 and conv.parse_budget("90s") == 90.0
    assert conv.parse_budget("1.5h") == 5400.0 and conv.parse_budget("12min") == 720.0
    assert conv.parse_size_budgets(["bundled=6", "large=12"]) == [("bundled", 360.0), ("large", 720.0)]
    # a size with two budgets keeps both, in order; a repeat is dropped
    assert conv.parse_size_budgets(["bundled=2", "large=4", "bundled=8", "bundled=120s"]) == [
        ("bundled", 120.0), ("large", 240.0), ("bundled", 480.0)]
    for bad in ("", "0", "-3", "6 days", "x"):
        with pytest.raises(ValueError):
            conv.parse_budget(bad)
    with pytest.raises(ValueError):
        conv.parse_size_budgets(["huge=6"])


def test_tree_cpu_counts_a_running_grandchild():
    """The budget watcher sums the CPU time of the whole tree: a shell whose child burns ~0.6 s of CPU."""
    import subprocess
    import time

    conv = _module("peer_converge")
    burn = f"{sys.executable} -c 'import time; t = time.process_time()\nwhile time.process_time() - t < 0.6: pass'"
    proc = subprocess.Popen(["bash", "-c", burn + "; sleep 30"])
    try:
        deadline = time.time() + 20
        while conv.tree_cpu_s(proc.pid) < 0.55 and time.time() < deadline:
            time.sleep(0.1)
        got = conv.tree_cpu_s(proc.pid)  # the burner has exited by now: counted through its parent's cutime
        assert 0.55 <= got < 2.0
    finally:
        proc.kill()
        proc.wait()


def test_mace_epochs_fit_the_budget():
    """Initial evaluation and epoch 0 10 s of wall apart at 50% CPU: 5 CPU-s an epoch; the probe's other 25 CPU-s
    paid once."""
    conv = _module("peer_converge")
    log = ("2026-12-06 10:00:00.000 INFO: Started training, reporting errors on validation set\n"
           "2026-12-06 10:00:10.000 INFO: Initial: head: Default, loss=1.0\n"
           "2026-12-06 10:00:20.000 INFO: Epoch 0: head: Default, loss=0.5\n")
    got = conv.mace_epochs_for_budget(log, probe_cpu_s=30.0, probe_wall_s=60.0, budget_s=125.0)
    assert got["epoch_cpu_s"] == pytest.approx(5.0) and got["fixed_cpu_s"] == pytest.approx(25.0)
    assert got["epochs"] == 20  # (120 - 20) / 5
    assert conv.mace_epochs_for_budget(log, 30.0, 60.0, 10.0)["epochs"] == 4  # never fewer than 4
    with pytest.raises(ValueError):
        conv.mace_epochs_for_budget(log.splitlines()[0], 30.0, 60.0, 120.0)


def test_pareto_front_and_equal_error_throughput():
    par = _module("peer_pareto")
    pts = [(50.0, 1000.0), (40.0, 500.0), (60.0, 800.0), (40.0, 400.0), (30.0, 100.0), (50.0, 1000.0)]
    # (60, 800) is beaten by (50, 1000); (40, 400) by (40, 500); the duplicate pair beats neither of its copies
    assert par.pareto_front(pts) == [4, 1, 0, 5]
    assert par.throughput_at_error(pts, 45.0) == 500.0
    assert par.throughput_at_error(pts, 29.0) is None
    best = _module("peer_converge").best_rates(
        [_rec("a", "keep", 1536, 0.2), _rec("a", "keep", 1536, 0.1), {"route": "a", "atoms": 1536, "error": "x"}])
    assert best == {("a", 1536): pytest.approx(15360.0)}


def test_pareto_headline_states_the_ratio_at_equal_force_error():
    par = _module("peer_pareto")
    names = _module("peer_converge").NAMES

    def row(peer, size, f, t, budget=2.0, run="r1"):
        return {"peer": peer, "code": names[peer], "size": size, "budget_cpu_min": budget, "test": {"forces_mae": f},
                "throughput": {"1536": {"atom_steps_per_cpu_s": t, "run": run}}}

    rows = [row("mlmd", "bundled", 50.0, 20000.0), row("mlmd", "large", 40.0, 8000.0, 4.0),
            row("nequip", "bundled", 45.0, 8000.0, 4.0), row("mace", "large", 35.0, 1000.0, 4.0),
            # the longer budget: mlmd's 30 meV/Å model of 8 CPU-min is timed in run r2
            row("mlmd", "bundled", 30.0, 18000.0, 8.0, "r2"), row("nequip", "bundled", 32.0, 9000.0, 8.0, "r2"),
            # a 2-minute peer: mlmd's 4-minute model (40 meV/Å) does not count for it, its 8-minute one neither
            row("mace", "bundled", 45.0, 2000.0, 2.0)]
    text = "\n".join(par.headline(rows, "1536"))
    assert "NequIP bundled 4 CPU-min (F MAE 45.0 meV/Å, 8,000 atom-steps/CPU-s): mlmd at equal or lower force MAE " \
           "runs **1.00x**" in text
    assert "MACE large 4 CPU-min (F MAE 35.0 meV/Å): no mlmd model of no more CPU reaches its force MAE (mlmd's " \
           "lowest: 40.0)" in text
    assert "NequIP bundled 8 CPU-min (F MAE 32.0 meV/Å, 9,000 atom-steps/CPU-s): mlmd at equal or lower force MAE " \
           "runs **2.00x**" in text
    assert "MACE bundled 2 CPU-min (F MAE 45.0 meV/Å): no mlmd model of no more CPU reaches its force MAE (mlmd's " \
           "lowest: 50.0)" in text
    assert text.index("MACE bundled 2") < text.index("NequIP bundled 4") < text.index("NequIP bundled 8")


def test_speed_records_are_attributed_to_their_budget_and_latest_run():
    """Old lines name no budget (their header maps size to budget); new ones carry it. A model timed in two runs
    takes the later run's figures only."""
    conv = _module("peer_converge")

    def rec(route, peer, cpu, **kw):
        return {"route": route, "peer": peer, "atoms": 1536, "step_cpu_s": cpu, **kw}

    lines = [{"header": True, "time": "2026-12-06 13:00:00", "budgets": {"bundled": 120.0}},
             rec("mlmd bundled, ASE compiled", "mlmd", 0.1), rec("mlmd bundled, LAMMPS compiled", "mlmd", 0.08),
             rec("MACE bundled, torch.compile", "mace", 0.6),
             {"header": True, "time": "2026-12-06 16:40:00", "budgets": [["bundled", 120.0], ["bundled", 480.0]]},
             rec("mlmd bundled 8min, ASE compiled", "mlmd", 0.12, size="bundled", budget_cpu_s=480.0),
             rec("mlmd bundled 8min, ASE compiled", "mlmd", 0.096, size="bundled", budget_cpu_s=480.0),
             rec("MACE bundled 2min, torch.compile", "mace", 0.768, size="bundled", budget_cpu_s=120.0)]
    got = conv.model_rates(lines)
    assert set(got) == {("mlmd", "bundled", 120.0), ("mace", "bundled", 120.0), ("mlmd", "bundled", 480.0)}
    assert got[("mlmd", "bundled", 120.0)]["run"] == "2026-12-06 13:00:00"
    assert got[("mlmd", "bundled", 120.0)]["atoms"]["1536"] == {"ASE compiled": pytest.approx(15360.0),
                                                                "LAMMPS compiled": pytest.approx(19200.0)}
    assert got[("mlmd", "bundled", 480.0)]["atoms"]["1536"] == {"ASE compiled": pytest.approx(16000.0)}
    assert got[("mace", "bundled", 120.0)] == {"run": "2026-12-06 16:40:00",
                                               "atoms": {"1536": {"torch.compile": pytest.approx(2000.0)}}}
    labels = [e[0] for e in conv.speed_entries({("bundled", 480.0): {"mlmd": Path("a.pt"), "mace": Path("m")}})]
    assert labels == ["mlmd bundled 8min, LAMMPS compiled", "mlmd bundled 8min, ASE compiled",
                      "MACE bundled 8min, torch.compile"]


def test_validation_curves_from_each_codes_log(tmp_path):
    conv = _module("peer_converge")
    (tmp_path / "mlmd").mkdir()
    (tmp_path / "mlmd" / "metrics.csv").write_text("epoch,val_loss,val_forces_mae\n1,3,90.0\n2,2,80.5\n3,1,70.25\n")
    assert conv.val_force_curve("mlmd", tmp_path / "mlmd") == ("MAE", [90.0, 80.5, 70.25])
    # Lightning's CSV: training-step rows without validation columns, a later version folder continues the epochs
    for k, text in enumerate(["epoch,step,train_loss,val0_epoch/forces_mae\n0,5,1.0,\n0,8,,0.1\n1,16,,0.09\n",
                              "epoch,step,val0_epoch/forces_mae\n2,24,0.085\n"]):
        d = tmp_path / "nequip" / "lightning_logs" / f"version_{k}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(text)
    kind, vals = conv.val_force_curve("nequip", tmp_path / "nequip")
    assert kind == "MAE" and vals == pytest.approx([100.0, 90.0, 85.0])
    (tmp_path / "mace").mkdir()
    (tmp_path / "mace" / "train.log").write_text(
        "2026-12-06 10:00:10.000 INFO: Initial: head: Default, loss=1.00000000, RMSE_E_per_atom=   50.00 meV, "
        "RMSE_F=  300.00 meV / A, RMSE_stress=   10.00 meV / A^3\n"
        + "".join(f"2026-12-06 10:00:{20 + e}.000 INFO: Epoch {e}: head: Default, loss=0.50000000, "
                  f"RMSE_E_per_atom=   20.00 meV, RMSE_F=  {200.0 - 10 * e:6.2f} meV / A, "
                  "RMSE_stress=    5.00 meV / A^3\n"
                  for e in range(3)))
    assert conv.val_force_curve("mace", tmp_path / "mace") == ("RMSE", [200.0, 190.0, 180.0])
    # after the switch to stage two (energy weight x1000) the force error jumps: only stage two's epochs count
    with open(tmp_path / "mace" / "train.log", "a") as fh:
        fh.write("2026-12-06 10:00:23.000 INFO: Changing loss based on Stage Two Weights\n"
                 + "".join(f"2026-12-06 10:00:{24 + e}.000 INFO: Epoch {e}: head: Default, loss=3.0, "
                           f"RMSE_E_per_atom=   9.00 meV, RMSE_F=  {400.0 - 20 * e:6.2f} meV / A\n" for e in (3, 4)))
    assert conv.val_force_curve("mace", tmp_path / "mace") == ("RMSE (stage two)", [340.0, 320.0])


def test_curve_summary_tells_falling_from_flat():
    conv = _module("peer_converge")
    falling = conv.curve_summary("MAE", [100, 90, 80, 75, 70, 66, 63, 60])  # last 2: best 60 against 66 before
    assert falling["still_falling"] is True and falling["best_epoch"] == 8 and falling["tail_epochs"] == 2
    assert falling["tail_change"] == pytest.approx(60 / 66 - 1)
    flat = conv.curve_summary("MAE", [100, 70, 60, 60.5, 59.9, 60.2, 60.1, 60.0])  # 59.9 within 1% of 60
    assert flat["still_falling"] is False and flat["best_epoch"] == 5
    rising = conv.curve_summary("RMSE", [100, 50, 40, 45, 47, 52, 60, 70])  # the best long before the end
    assert rising["still_falling"] is False and rising["tail_change"] > 0
    assert rising["peak_after_best"] == pytest.approx(70 / 40) and flat["peak_after_best"] < 1.02
    assert conv.curve_summary("MAE", [3.0, 2.0])["still_falling"] is None  # too short to tell


def test_pareto_step_writes_json_plot_and_results_section(tmp_path):
    """The step end to end on made-up records: the fastest route per model, the table row, the front; then a
    second budget of the same size added while the first one's training folder is gone: both rows stay."""
    import json
    import shutil
    from types import SimpleNamespace

    conv, par = _module("peer_converge"), _module("peer_pareto")
    p = SimpleNamespace(RUNS=tmp_path / "runs", BENCH=tmp_path / "bench")
    (p.BENCH / "data").mkdir(parents=True)
    (p.BENCH / "RESULTS.md").write_text(f"# results\n\n{par.START}\nold\n{par.END}\n\nafter\n")

    def trained(budget_s, fmae, curve=None):
        base = conv.run_dir(p.RUNS, "bundled", budget_s)
        base.mkdir(parents=True)
        for peer, f in fmae.items():
            (base / f"train_{peer}.json").write_text(json.dumps(
                {"parameters": 1000, "cpu_s": budget_s - 2, "epochs": 7, "stopped_by_budget": peer != "mace"}))
            (base / f"test_{peer}.json").write_text(json.dumps(
                {"energy_per_atom_mae": 1.0, "forces_mae": f, "stress_mae": 0.5}))
        if curve:
            (base / "mlmd").mkdir()
            (base / "mlmd" / "metrics.csv").write_text(
                "epoch,val_forces_mae\n" + "".join(f"{k},{v}\n" for k, v in enumerate(curve)))
        return base

    def rec(route, peer, cpu, **kw):
        return {**_rec(route, "keep", 1536, cpu), "peer": peer, **kw}

    first = trained(120.0, {"mlmd": 50.0, "nequip": 60.0, "mace": 45.0})
    recs = [{"header": True, "time": "13:00", "budgets": {"bundled": 120.0}},
            rec("mlmd bundled, ASE compiled", "mlmd", 0.1), rec("mlmd bundled, LAMMPS compiled", "mlmd", 0.08),
            rec("NequIP bundled, AOTInductor", "nequip", 0.2), rec("MACE bundled, torch.compile", "mace", 0.5)]
    speed = p.BENCH / "data" / conv.SPEED_DATA
    speed.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    par.pareto(p, [("bundled", 120.0)])
    out = json.loads((p.BENCH / "data" / "converge.json").read_text())
    assert out["front"] == ["MACE bundled 2 CPU-min", "mlmd bundled 2 CPU-min"]  # NequIP: slower, less accurate
    mlmd = next(r for r in out["rows"] if r["peer"] == "mlmd")
    assert mlmd["throughput"]["1536"]["route"] == "LAMMPS compiled"
    assert mlmd["throughput"]["1536"]["atom_steps_per_cpu_s"] == pytest.approx(19200.0)
    text = (p.BENCH / "RESULTS.md").read_text()
    assert "old" not in text and text.endswith("after\n")
    assert "| mlmd | bundled | 2 | 1,000 | 1.00 | 50.0 | 0.500 | 2.0 | 7 | budget | – | 19,200 (LAMMPS compiled) |" \
        in text
    assert "NequIP bundled 2 CPU-min (F MAE 60.0 meV/Å, 7,680 atom-steps/CPU-s): mlmd at equal or lower force MAE " \
           "runs **2.50x**" in text
    assert (p.BENCH / "pareto.png").stat().st_size > 10_000

    # the 2-minute folders are gone; an 8-minute training of the same size is added and timed in a new run
    shutil.rmtree(first)
    trained(480.0, {"mlmd": 30.0, "nequip": 40.0}, curve=[90, 70, 60, 50, 45, 40, 36, 33])
    with open(speed, "a") as fh:
        for r in [{"header": True, "time": "16:40", "budgets": [["bundled", 480.0]]},
                  rec("mlmd bundled 8min, LAMMPS compiled", "mlmd", 0.1, size="bundled", budget_cpu_s=480.0),
                  rec("NequIP bundled 8min, AOTInductor", "nequip", 0.3, size="bundled", budget_cpu_s=480.0)]:
            fh.write(json.dumps(r) + "\n")
    par.pareto(p, [("bundled", 120.0), ("bundled", 480.0)])
    out = json.loads((p.BENCH / "data" / "converge.json").read_text())
    assert [(r["code"], r["budget_cpu_min"]) for r in out["rows"]] == [
        ("mlmd", 2.0), ("NequIP", 2.0), ("MACE", 2.0), ("mlmd", 8.0), ("NequIP", 8.0)]
    assert out["rows"][3]["throughput"]["1536"]["run"] == "16:40"
    text = (p.BENCH / "RESULTS.md").read_text()
    assert "| mlmd | bundled | 2 | 1,000 | 1.00 | 50.0 |" in text  # carried over from converge.json
    assert "| mlmd | bundled | 8 | 1,000 | 1.00 | 30.0 | 0.500 | 8.0 | 7 | budget | still falling: best 33.0 at " \
           "epoch 8/8, last 2 epochs -17.5% | 15,360 (LAMMPS compiled) |" in text
    assert "No result (training not run or not finished): MACE bundled 8 CPU-min." in text
    assert "NequIP bundled 8 CPU-min (F MAE 40.0 meV/Å, 5,120 atom-steps/CPU-s): mlmd at equal or lower force MAE " \
           "runs **3.00x**" in text
    assert "NequIP bundled 2 CPU-min (F MAE 60.0 meV/Å, 7,680 atom-steps/CPU-s): mlmd at equal or lower force MAE " \
           "runs **2.50x**" in text  # the 2-minute comparison stays within its own run


def test_converge_section_survives_a_rewrite_of_results(tmp_path):
    par = _module("peer_pareto")
    old = (f"# a\n<!-- peers-fair:start -->\nfair\n<!-- peers-fair:end -->\n\n{par.START}\nbudget table\n"
           f"{par.END}\n\nz\n")
    path = tmp_path / "RESULTS.md"
    path.write_text("# b\n<!-- peers-fair:start -->\nfair 2\n<!-- peers-fair:end -->\n\nsweep\n")
    par.carry_section(old, path)
    text = path.read_text()
    assert text.index("fair 2") < text.index("budget table") < text.index("sweep")
    assert text.count(par.START) == 1
