"""`mlmd md`: the MD runner layer of the CLI. It owns one request type (MDRequest: every option of a run, the
same for every engine, checked before anything starts), one dispatch (run), one runner per engine with one
signature (ase_md, openmm_md, lammps_md: `run(request) -> dict[str, float]`) and one progress printer
(progress). It imports the engine adapters (mlmd.engines); they never import it.

Importing this package stays light: an engine's runner (and OpenMM or LAMMPS) is imported when a run asks for it.
"""

from mlmd.md.ase_md import advance
from mlmd.md.request import (
    DEFAULT_BOX,
    DEFAULT_MODEL,
    ENGINES,
    STRUCTURE_FORMATS,
    MDRequest,
    check_md_options,
    default_structure_allowed,
    md_output_dir,
    read_structure,
)
from mlmd.md.runner import run, run_md, runner_of

__all__ = [
    "DEFAULT_BOX",
    "DEFAULT_MODEL",
    "ENGINES",
    "STRUCTURE_FORMATS",
    "MDRequest",
    "advance",
    "check_md_options",
    "default_structure_allowed",
    "md_output_dir",
    "read_structure",
    "run",
    "run_md",
    "runner_of",
]
