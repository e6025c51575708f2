"""The training checkpoint format: file names, reading a checkpoint and rebuilding its potential.

Written by the trainer (mlmd.train), read by packaging (mlmd.deploy): the format belongs to neither, so it lives
beside the models it stores. A checkpoint is a ``torch.save`` dict (tensors and plain data only, read with
``weights_only=True``) with at least ``hparams`` (mlmd.model.potential.potential_from_hparams), ``model_state``,
``config`` (the training config as a dict), ``epoch``, and optionally ``data_sha256``, ``history`` and
``long_range_charges`` (fitted fixed charges, {Z: e}).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mlmd.keys import CHECKPOINT_BEST, CHECKPOINT_LAST, ENSEMBLE_MANIFEST, TEST_METRICS  # noqa: F401  (re-exported)
from mlmd.model.potential import ShortRangePotential, potential_from_hparams


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file: a checkpoint's data_sha256 is that of its training data file(s), "+"-joined."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None


def load_checkpoint_model(path: str | Path) -> ShortRangePotential:
    """The checkpoint's potential, with its weights, in its training dtype, in eval mode; a ValueError for a
    checkpoint with non-finite weights (a diverged run)."""
    st = load_checkpoint(path)
    model = potential_from_hparams(st["hparams"])
    dtype = {"float32": torch.float32, "float64": torch.float64}[st["config"]["model"]["dtype"]]
    model = model.to(dtype)
    model.load_state_dict(st["model_state"])
    model.eval()
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(
            f"checkpoint {path} has non-finite (NaN or infinite) weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): the training that wrote it diverged; it cannot be packaged"
        )
    return model


def non_finite_weights(module: torch.nn.Module) -> list[str]:
    """Names of the trained tensors of a module (its parameters, and the energy shifts and scale) that hold NaN or
    infinity. Other buffers are left alone: lookup tables keep NaN for unknown elements on purpose."""
    named = list(module.named_parameters()) + [
        (k, v) for k, v in module.named_buffers() if k.rsplit(".", 1)[-1] in ("shifts", "scale", "charge_offsets")
    ]
    return [k for k, v in named if v.is_floating_point() and not bool(torch.isfinite(v).all())]
