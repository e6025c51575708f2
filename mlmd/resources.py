"""Where mlmd's shipped files are: the bundled inputs (models, demo structures, LAMMPS templates) and the
sources of the LAMMPS plugin.

git holds one copy of each, in the repository's inputs/ and plugins/lammps/. A source checkout (editable
install, or PYTHONPATH) reads them there; a wheel or a non-editable `pip install .` carries them as package
data under mlmd/_share/ (pyproject's package-dir maps the two folders there at build time). Standard library
only: the `lmp` entry point imports this module on every start.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHARE = PACKAGE / "_share"


def is_checkout(folder: Path) -> bool:
    """Whether folder is the root of an mlmd source tree (a clone or worktree of the repository)."""
    return (folder / "mlmd" / "__init__.py").is_file() and (folder / "plugins" / "lammps" / "build.sh").is_file()


def checkout_root() -> Path | None:
    """The repository this package was imported from, or None for an installed package (wheel, `pip install .`)."""
    return PACKAGE.parent if is_checkout(PACKAGE.parent) else None


def inputs_dir() -> Path:
    """The bundled inputs: <repo>/inputs in a checkout, mlmd/_share/inputs when installed."""
    root = checkout_root()
    return root / "inputs" if root is not None else SHARE / "inputs"


def plugin_source_dir() -> Path:
    """The LAMMPS plugin's C++ sources and build.sh: <repo>/plugins/lammps, or mlmd/_share/lammps when installed."""
    root = checkout_root()
    return root / "plugins" / "lammps" if root is not None else SHARE / "lammps"
