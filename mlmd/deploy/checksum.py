"""The weights checksum of a packaged model: written on its card by export, verified by load."""

from __future__ import annotations

import hashlib

import torch


def weights_sha256(module: torch.nn.Module) -> str:
    """Checksum of every parameter and buffer, in name order: what `mlmd info` verifies."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
