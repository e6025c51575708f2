"""openmm-torch's OpenMM plugins (kernels): loaded again when openmm was imported before torch, and openmmtorch
imported quietly. Importing this module reloads the kernels (every module that builds a TorchForce imports it).
"""

from __future__ import annotations

from typing import Any

import openmm


def _load_torch_plugins() -> list[str]:
    """Load openmm-torch's OpenMM plugins that failed because torch was not imported yet.

    OpenMM loads its plugins when ``openmm`` is first imported. The openmmtorch wheel's plugins link the
    libraries torch loads (libtorch, libnvrtc), so in a script that imports openmm before torch, as ordinary
    OpenMM scripts do, the Reference/CPU TorchForce kernels are missing ("Specified a Platform for a Context
    which does not support all required kernels"). torch is imported by now: load them again.
    Returns the libraries loaded here.
    """
    import re

    loaded = []
    for message in openmm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (\S*OpenMMTorch\w*\.(?:so|dylib|dll)):", message)
        if match and match.group(1) not in _TORCH_PLUGINS_RELOADED:
            _TORCH_PLUGINS_RELOADED.add(match.group(1))
            try:
                openmm.Platform.loadPluginLibrary(match.group(1))
                loaded.append(match.group(1))
            except Exception:  # noqa: BLE001  e.g. the OpenCL plugin without libOpenCL: not ours to fix
                pass
    return loaded


_TORCH_PLUGINS_RELOADED: set[str] = set()
_load_torch_plugins()


def _import_openmmtorch() -> Any:
    """openmmtorch, imported after torch (which loads the CUDA libraries the wheel links) and without the
    root-logger warning its SWIG module triggers by importing the deprecated ``simtk.openmm``."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import openmmtorch
    finally:
        logging.disable(previous)
    return openmmtorch
