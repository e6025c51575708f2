"""Peak memory and time of D3(BJ) with the ATM three-body term at the standard cutoffs (60/40/40 bohr).

    OMP_NUM_THREADS=1 python benchmarks/d3_atm_memory.py [--structure water192|graphite16] [--module FILE]

Each case runs in a fresh subprocess, which evaluates energy, forces and stress (autograd through positions
and a strain) once and reports its peak RSS (``ru_maxrss``): first two-body only (the baseline), then with ATM.
``--module FILE`` imports ``D3Dispersion`` from another copy of dispersion.py (e.g. the pre-chunking one,
``git show 69f8603:mlmd/model/dispersion.py > /tmp/d3_old.py``) to measure "before"; ``--limit-gb`` caps the
child's address space so that a runaway allocation fails instead of taking the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib.util, json, resource, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
if args["limit_gb"] > 0:
    lim = int(args["limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
torch.set_num_threads(1)
if args["module"]:
    spec = importlib.util.spec_from_file_location("d3_other", args["module"])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    D3Dispersion = mod.D3Dispersion
else:
    from mlmd.model.dispersion import D3Dispersion
import ase.io
from ase import Atoms
if args["structure"] == "water192":
    atoms = ase.io.read(args["repo"] + "/inputs/water/water_box_192.xyz")
else:
    a, c = 2.46, 6.70
    cell = [[a, 0, 0], [-a / 2, a * 3**0.5 / 2, 0], [0, 0, c]]
    frac = [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    atoms = Atoms("C4", scaled_positions=frac, cell=cell, pbc=True).repeat((2, 2, 1))
zs = sorted(set(int(z) for z in atoms.numbers))
m = D3Dispersion(zs, "pbe", three_body=args["atm"]).double()
dt = torch.float64
pos = torch.tensor(atoms.positions, dtype=dt, requires_grad=True)
cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dt)
strain = torch.zeros(3, 3, dtype=dt, requires_grad=True)
sym = 0.5 * (strain + strain.T)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
out = {"n_atoms": len(atoms), "rss_setup_mb": rss0}
try:
    e = m(pos + pos @ sym, cell + cell @ sym, torch.tensor(atoms.numbers), torch.tensor(atoms.pbc))
    g = torch.autograd.grad(e, [pos, strain])
    out["energy_ev_per_atom"] = float(e) / len(atoms)
except RuntimeError as err:
    out["error"] = str(err).splitlines()[0][:200]
out["seconds"] = time.perf_counter() - t
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run(structure: str, atm: bool, module: str, limit_gb: float) -> dict:
    arg = json.dumps({"structure": structure, "atm": atm, "module": module, "limit_gb": limit_gb,
                      "repo": str(REPO)})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--structure", choices=["water192", "graphite16"], default="water192")
    ap.add_argument("--module", default="", help="a dispersion.py to import D3Dispersion from (default: mlmd's)")
    ap.add_argument("--limit-gb", type=float, default=16.0)
    args = ap.parse_args()
    base = run(args.structure, False, args.module, args.limit_gb)
    atm = run(args.structure, True, args.module, args.limit_gb)
    print(f"{args.structure}: {base.get('n_atoms')} atoms, module {args.module or 'mlmd.model.dispersion'}")
    for name, r in (("two-body only", base), ("with ATM", atm)):
        if "error" in r:
            print(f"  {name:14s} FAILED after {r.get('seconds', float('nan')):.1f} s: {r['error']}")
        else:
            print(f"  {name:14s} peak RSS {r['peak_rss_mb']:8.0f} MB (after setup {r['rss_setup_mb']:.0f} MB), "
                  f"{r['seconds']:7.1f} s, E {r['energy_ev_per_atom']:.10f} eV/atom")
    if "error" not in base and "error" not in atm:
        print(f"  ATM adds {atm['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB of peak RSS, "
              f"{atm['energy_ev_per_atom'] - base['energy_ev_per_atom']:.3e} eV/atom")


if __name__ == "__main__":
    main()
