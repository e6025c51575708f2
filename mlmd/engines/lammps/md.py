"""The bundled NVT/NPT input scripts (inputs/lammps) and the summary of their log.

`mlmd md --engine lammps` runs them through mlmd.md.lammps_md.
"""

from __future__ import annotations

import re

from mlmd.engines.lammps.plugin import INPUTS, LammpsError

BUNDLED_DATA = INPUTS / "water_3000.data"
BUNDLED_DATA_ELEMENTS = ("H", "O")
SCRIPTS = {"nvt": INPUTS / "in.water_nvt", "npt": INPUTS / "in.water_npt"}


def md_summary(log: str) -> dict[str, float]:
    """Steps/s, ms/step, final temperature and where the time went, from a log of the bundled scripts.

    model_s / bridge_s: seconds in the model (forward + backward) and in the plugin's own work (graph, copies,
    scatter) during the run loop, summed over ranks; outside_model_share: the share of the loop's rank-seconds
    not spent in the model (bridge + neighbour lists + communication + integration). max_energy_std,
    max_force_std: the largest committee spread in the thermo rows (committee models).
    """
    loop = re.search(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log)
    if loop is None:
        raise LammpsError("no 'Loop time' line in the LAMMPS log")
    wall, procs, steps, natoms = float(loop.group(1)), int(loop.group(2)), int(loop.group(3)), int(loop.group(4))
    out = {"atoms": float(natoms), "ranks": float(procs), "steps": float(steps), "wall_s": wall}
    out["steps_per_s"] = steps / wall if wall > 0 else float("nan")
    out["ms_per_step"] = 1000.0 * wall / steps if steps else float("nan")
    lines = log[: loop.start()].splitlines()
    starts = [k for k, line in enumerate(lines) if line.split()[:1] == ["Step"]]
    if not starts:
        return out
    head = lines[starts[-1]].split()
    rows = []
    for line in lines[starts[-1] + 1 :]:
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            break
    rows = [r for r in rows if len(r) == len(head)]
    if not rows:
        return out
    if "Temp" in head:
        out["temperature"] = rows[-1][head.index("Temp")]
    if "e_std" in head and "f_std_max" in head:
        out["max_energy_std"] = max(r[head.index("e_std")] for r in rows)
        out["max_force_std"] = max(r[head.index("f_std_max")] for r in rows)
    if "model_s" in head and "bridge_s" in head:
        model_s = rows[-1][head.index("model_s")] - rows[0][head.index("model_s")]
        bridge_s = rows[-1][head.index("bridge_s")] - rows[0][head.index("bridge_s")]
        out["model_s"], out["bridge_s"] = model_s, bridge_s
        if wall > 0:
            out["bridge_share"] = bridge_s / (wall * procs)
            out["outside_model_share"] = 1.0 - model_s / (wall * procs)
    return out
