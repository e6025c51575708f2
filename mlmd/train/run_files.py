"""The output folder of a training run: the files a run writes, written atomically (a killed run leaves the
old file or the complete new one), the refusal to train over a previous run by accident, and the per-epoch
metrics.csv and learning_curve.png.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from mlmd.model.checkpoint import CHECKPOINT_BEST, CHECKPOINT_LAST, ENSEMBLE_MANIFEST, TEST_METRICS

OUTPUT_FILES = (
    CHECKPOINT_LAST, CHECKPOINT_BEST, "metrics.csv", "learning_curve.png", "split.json", TEST_METRICS
)
# what an ensemble run adds (mlmd.train.ensemble): its manifest, the members' mean metrics, member_<k>/ folders
ENSEMBLE_FILES = (ENSEMBLE_MANIFEST, "members_mean_metrics.json")


def previous_run_files(out: Path) -> list[Path]:
    """The files and member folders a training run left in `out` (empty for a new or unrelated folder)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [out / n for n in OUTPUT_FILES + ENSEMBLE_FILES if (out / n).exists()]
    found += [out / (n + ".tmp") for n in OUTPUT_FILES if (out / (n + ".tmp")).exists()]
    found += sorted(p for p in out.glob("member_*") if p.is_dir() and p.name[7:].isdigit())
    return found


def prepare_output_dir(out: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Never train over a previous run by accident: a folder holding one is refused unless the run is to be
    resumed (resume) or replaced (overwrite: its files are deleted first; other files in the folder stay)."""
    import shutil

    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the previous run or replace it")
    old = previous_run_files(out)
    if not old or resume:
        return
    if overwrite:
        for p in old:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        print(f"--overwrite: deleted the previous run's {', '.join(p.name for p in old)} in {out}")
        return
    finished = (out / TEST_METRICS).is_file() or (out / "members_mean_metrics.json").is_file()
    raise ValueError(
        f"output folder {out} holds a {'finished' if finished else 'previous'} training run "
        f"({', '.join(p.name for p in old)}): pass --resume to continue it from {CHECKPOINT_LAST}, or --overwrite "
        "to delete its files and train from scratch (or choose another --output-dir)"
    )


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that it is either the old one or the complete new one, whenever the process dies.

    The bytes go to a temporary file beside it, are flushed to disk, and replace the file in one rename.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the directory entry is on disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def plot_learning_curve(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(ep, [r["train_loss"] for r in rows], label="train")
    axes[0].semilogy(ep, [r["val_loss"] for r in rows], label="validation (EMA)")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].semilogy(ep, [r.get("val_energy_per_atom_mae", math.nan) for r in rows])
    axes[1].set_ylabel("val energy MAE (meV/atom)")
    axes[2].semilogy(ep, [r.get("val_forces_mae", math.nan) for r in rows])
    axes[2].set_ylabel("val force MAE (meV/Å)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_metrics(history: list[dict[str, Any]], out: Path) -> None:
    """metrics.csv (a row per epoch, the columns of the last) and learning_curve.png in the folder out."""
    keys = list(history[-1].keys())
    fh = io.StringIO(newline="")
    w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in history:
        w.writerow({k: r.get(k, "") for k in keys})
    write_atomic(out / "metrics.csv", fh.getvalue())
    plot_learning_curve(history, out / "learning_curve.png")
