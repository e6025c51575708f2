"""`make demo`: the bundled water model, its card, then a short MD run in each engine."""

from __future__ import annotations

import sys
import time

from mlmd.md import DEFAULT_BOX, DEFAULT_MODEL, run_md


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def main() -> int:
    from mlmd.deploy.load import describe, load_model

    section(f"bundled model {DEFAULT_MODEL.relative_to(DEFAULT_MODEL.parents[2])}")
    _, card = load_model(DEFAULT_MODEL)
    print(describe(card))
    t0 = time.time()
    section("ASE: Langevin NVT, 192-atom periodic water box")
    run_md(DEFAULT_MODEL, engine="ase", structure=DEFAULT_BOX, steps=40, log_every=10)
    for engine in ("openmm", "lammps"):
        section(f"{engine}: periodic water box")
        run_md(DEFAULT_MODEL, engine=engine, structure=DEFAULT_BOX, steps=20, log_every=5, replicate=(2, 2, 2))
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
