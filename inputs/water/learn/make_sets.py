"""Split the bundled GFN2 water data into the active-learning demo's sets (deterministic).

- initial.xyz: a deliberately small start: the six 32-molecule boxes at 300 K and three 64-molecule boxes
  at 300 K, 1.0 g/cm3;
- test_300K.xyz (in domain): the other 300 K, 1.0 g/cm3 boxes;
- test_hot.xyz (out of domain): every 500 K box at 1.0 and 1.08 g/cm3 (hotter and denser than the start);
- start_0.xyz, start_1.xyz: MD starting boxes (two of the 32-molecule 300 K boxes).
Run: python make_sets.py (from this folder).
"""

from pathlib import Path

import ase.io

here = Path(__file__).resolve().parent
frames = ase.io.read(here.parent / "water_gfn2.xyz", ":")


def pick(n_atoms, temperature, density=None, strained=None):
    return [
        f for f in frames
        if len(f) == n_atoms and f.info["temperature_K"] == temperature
        and (density is None or f.info["density_g_cm3"] == density)
        and (strained is None or bool(f.info.get("strained", False)) == strained)
    ]


small_300 = pick(96, 300.0)
box_300 = pick(192, 300.0, 1.0, strained=False)
initial = small_300 + box_300[:3]
test_300 = box_300[3:] + pick(192, 300.0, 1.0, strained=True)
hot = pick(192, 500.0, 1.0, strained=False) + pick(192, 500.0, 1.08, strained=False)
ase.io.write(here / "initial.xyz", initial)
ase.io.write(here / "test_300K.xyz", test_300)
ase.io.write(here / "test_hot.xyz", hot)
ase.io.write(here / "start_0.xyz", small_300[0])
ase.io.write(here / "start_1.xyz", small_300[3])
print(f"initial {len(initial)}, test_300K {len(test_300)}, test_hot {len(hot)} frames")
