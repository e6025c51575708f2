"""Deep ensembles: K members trained on the same split from different seeds (initial weights, data order).

Members live in output_dir/member_<k>/ (each a normal training folder: checkpoints, metrics, resume);
output_dir/ensemble.json lists them, which is what `mlmd package output_dir` looks for.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mlmd.config import Config
from mlmd.model.checkpoint import ENSEMBLE_MANIFEST, TEST_METRICS

DONE_FILE = TEST_METRICS  # written by Trainer.finish(): the member is complete


def member_config(cfg: Config, k: int) -> Config:
    member = copy.deepcopy(cfg)
    member.output_dir = str(Path(cfg.output_dir) / f"member_{k}")
    member.train.seed = cfg.train.seed + 1000 * k  # data.split_seed stays: every member sees the same split
    member.train.ensemble = 1
    return member


def train_ensemble(cfg: Config, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Train cfg.train.ensemble members one after the other; with resume, finished members are kept."""
    from mlmd.model.checkpoint import CHECKPOINT_LAST
    from mlmd.train.trainer import Trainer

    n = cfg.train.ensemble
    if n < 2:
        raise ValueError(f"train.ensemble must be at least 2 for an ensemble, got {n}")
    if cfg.model.long_range.electrostatics == "predicted":
        raise ValueError(
            "an ensemble of predicted-charge models is not supported (each member would predict its own charges "
            "and electrostatic energy, which one committee file cannot serve): train members one by one"
        )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"member_{k}" for k in range(n)]
    (out / ENSEMBLE_MANIFEST).write_text(
        json.dumps({"members": names, "seeds": [member_config(cfg, k).train.seed for k in range(n)]}, indent=2)
    )
    results = []
    for k in range(n):
        mc = member_config(cfg, k)
        mdir = Path(mc.output_dir)
        if resume and (mdir / DONE_FILE).is_file():
            print(f"ensemble member {k + 1}/{n}: already trained ({mdir})")
            results.append(json.loads((mdir / DONE_FILE).read_text()))
            continue
        print(f"ensemble member {k + 1}/{n}: seed {mc.train.seed} -> {mdir}", flush=True)
        member_resume = resume and (mdir / CHECKPOINT_LAST).is_file()
        results.append(Trainer(mc, resume=member_resume, progress=progress).train())
    summary = {
        split: {
            key: sum(r[split][key] for r in results) / n
            for key in results[0].get(split, {})
        }
        for split in ("val", "test") if split in results[0]
    }
    (out / "members_mean_metrics.json").write_text(json.dumps(summary, indent=2))
    return results
