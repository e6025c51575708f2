"""Training loop: Adam, EMA of weights, plateau learning-rate schedule, early stopping, checkpoint/resume.

Per epoch it writes metrics.csv and learning_curve.png in the output folder (mlmd.train.run_files); checkpoints
hold only tensors, numbers and strings, so they load with torch.load(weights_only=True). The data it trains on
is prepared by mlmd.train.dataset, the averaged weights it validates and saves kept by mlmd.train.ema.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mlmd import __version__
from mlmd import keys as K
from mlmd.config import Config
from mlmd.data.structures import read_structures, split_indices
from mlmd.model.checkpoint import CHECKPOINT_BEST, CHECKPOINT_LAST, TEST_METRICS, file_sha256, load_checkpoint_model
from mlmd.model.potential import ShortRangePotential, build_potential
from mlmd.train.dataset import (
    Dataset,
    TrainingError,
    check_label_magnitudes,
    check_labels,
    evaluate_dataset,
    fit_energy_shift_scale,
    predict_batch,
)
from mlmd.train.ema import ExponentialMovingAverage
from mlmd.train.loss import weighted_loss
from mlmd.train.run_files import OUTPUT_FILES, write_atomic, write_metrics


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:  # left by a run killed while writing (write_atomic's temporary files)
            (self.out / (name + ".tmp")).unlink(missing_ok=True)
        self.progress = progress
        tc = cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.model.dtype]

        dc = cfg.data
        keys = {"charges_key": dc.charges_key, "total_charge_key": dc.total_charge_key}
        self.label_keys: dict[str, str | None] = {}
        structures = read_structures(dc.path, dc.energy_key, dc.forces_key, dc.stress_key, **keys,
                                     keys_out=self.label_keys)
        check_labels(structures, self.label_keys, cfg, dc.path)
        check_label_magnitudes(structures, self.label_keys, self.dtype, dc.path)
        self.data_sha256 = file_sha256(dc.path)
        if dc.test_path:
            split = split_indices(len(structures), dc.val_fraction, 0.0, dc.split_seed)
            test_structs = read_structures(dc.test_path, dc.energy_key, dc.forces_key, dc.stress_key, **keys)
            check_label_magnitudes(test_structs, self.label_keys, self.dtype, dc.test_path)
        else:
            split = split_indices(len(structures), dc.val_fraction, dc.test_fraction, dc.split_seed)
            test_structs = [structures[i] for i in split["test"]]
        write_atomic(self.out / "split.json", json.dumps(split))
        train_structs = [structures[i] for i in split["train"]]
        if dc.extra_train_path:
            extra = read_structures(dc.extra_train_path, dc.energy_key, dc.forces_key, dc.stress_key, **keys)
            check_label_magnitudes(extra, self.label_keys, self.dtype, dc.extra_train_path)
            train_structs += extra
            self.data_sha256 += "+" + file_sha256(dc.extra_train_path)
            print(f"{len(extra)} extra training structures from {dc.extra_train_path}")
        val_structs = [structures[i] for i in split["val"]]
        if not train_structs or not val_structs:
            raise ValueError(f"need at least one training and one validation structure; got split {split}")
        self.atomic_numbers = sorted({int(z) for s in structures + test_structs for z in s.numbers})

        # long-range terms without trainable parameters: the short-range model learns what they leave.
        # Predicted-charge electrostatics depend on the network: trained jointly, never subtracted (subtracting
        # the fixed D3 term beside it is the same objective as fitting E_short + E_elec(q) + E_disp, and cheaper)
        from mlmd.model.longrange import CoulombTerm, build_long_range, split_terms, subtract_long_range

        self.long_range = build_long_range(cfg.model.long_range, self.atomic_numbers, train_structs)
        self.charge_term, fixed_terms = split_terms(self.long_range)
        self.long_range_charges: dict[int, float] = {}
        for t in self.long_range:
            if isinstance(t, CoulombTerm):
                self.long_range_charges = dict(t.charges.charges)
        if self.charge_term is not None:
            self.long_range_charges = dict(self.charge_term.initial_charges)
            self.charge_term = self.charge_term.to(self.dtype)
        elif tc.charges_weight > 0:
            raise ValueError("train.charges_weight > 0 needs model.long_range.electrostatics 'predicted'")
        if fixed_terms:
            print(f"subtracting long-range terms from the labels of {len(structures) + len(test_structs)} structures")
            train_structs, val_structs, test_structs = (
                subtract_long_range(fixed_terms, x) for x in (train_structs, val_structs, test_structs)
            )

        r_cut = cfg.model.r_cut
        self.train_data = Dataset(train_structs, r_cut, self.atomic_numbers, self.dtype)
        self.val_data = Dataset(val_structs, r_cut, self.atomic_numbers, self.dtype)
        self.test_data = Dataset(test_structs, r_cut, self.atomic_numbers, self.dtype) if test_structs else None

        self.model: ShortRangePotential = build_potential(
            self.atomic_numbers, cfg.model, self.train_data.graphs.mean_num_neighbors()
        )
        fit_structs = train_structs
        if self.charge_term is not None:
            # shifts and scale of what the untrained model (charges = the initial ones) leaves to the network,
            # as for fixed charges: otherwise the shifts would count the electrostatic energy a second time
            from mlmd.model.longrange import CoulombTerm

            start = CoulombTerm(self.charge_term.initial_charges, params=self.charge_term.coulomb.metadata())
            fit_structs = subtract_long_range([start], train_structs)
        shifts, scale = fit_energy_shift_scale(fit_structs, self.atomic_numbers)
        self.model.shifts.copy_(torch.as_tensor(shifts, dtype=self.dtype))
        self.model.scale.fill_(scale)
        if self.charge_term is not None:
            q0 = [self.long_range_charges[z] for z in self.atomic_numbers]
            self.model.charge_offsets.copy_(torch.as_tensor(q0, dtype=self.dtype))
        fit_inputs = getattr(self.model, "fit_input_statistics", None)
        if fit_inputs is not None:  # descriptor models standardise their inputs on the training set
            fit_inputs(self.train_data.batches(tc.batch_size))
        self.ema = ExponentialMovingAverage(self.model, tc.ema_decay)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, factor=tc.lr_factor, patience=tc.lr_patience, min_lr=tc.min_lr
        )
        self.epoch = 0
        self.best_val = math.inf
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.rng = np.random.default_rng(tc.seed)
        if resume:
            self._load(self.out / CHECKPOINT_LAST)

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "mlmd_version": __version__,
            "hparams": self.model.hparams,
            "model_state": weights,
            "ema_state": self.ema.state_dict(),
            "train_state": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "data_sha256": self.data_sha256,
            "long_range_charges": self.long_range_charges,
            "rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
        }

    def _ema_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.ema.module.state_dict().items()}

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        # a run killed while saving leaves the previous checkpoint, never a half-written one
        buf = io.BytesIO()
        torch.save(state, buf)
        write_atomic(path, buf.getvalue())

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
        st = torch.load(path, weights_only=True)
        self.model.load_state_dict(st["train_state"])
        self.ema.load_state_dict(st["ema_state"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.epoch = int(st["epoch"])
        self.best_val = float(st["best_val"])
        self.bad_epochs = int(st["bad_epochs"])
        self.history = list(st["history"])
        self.rng.bit_generator.state = json.loads(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed from {path} at epoch {self.epoch}")

    # ---- loop --------------------------------------------------------------------------------
    @property
    def variance_head(self) -> bool:
        return getattr(getattr(self.model, "network", None), "variance_readout", None) is not None

    def _energy_nll(self, batch: dict[str, torch.Tensor], pred: dict[str, torch.Tensor]) -> torch.Tensor:
        """The variance head's loss (a second pass through the network for its per-atom variances)."""
        from mlmd.model.properties import edge_vectors
        from mlmd.train.loss import energy_nll

        vec = edge_vectors(batch[K.POSITIONS], batch[K.CELL], batch[K.EDGE_INDEX], batch[K.EDGE_SHIFTS],
                           batch[K.BATCH]).detach()
        _, var = self.model.energies_and_variances(batch[K.SPECIES], batch[K.EDGE_INDEX], vec)
        n_structures = int(batch[K.N_ATOMS].shape[0])
        var_e = torch.zeros(n_structures, dtype=var.dtype).index_add(0, batch[K.BATCH], var)
        return energy_nll(pred[K.ENERGY].detach(), batch[K.ENERGY], var_e, batch[K.N_ATOMS])

    def _val_loss(self, metrics: dict[str, float]) -> float:
        tc = self.cfg.train
        # same weights as the training loss, on RMSEs in eV units
        loss = tc.energy_weight * (metrics.get("energy_per_atom_rmse", 0.0) / 1000) ** 2
        loss += tc.forces_weight * (metrics.get("forces_rmse", 0.0) / 1000) ** 2
        if "stress_rmse" in metrics:
            from mlmd.train.loss import STRESS_UNIT

            loss += tc.stress_weight * (metrics["stress_rmse"] / 1000 / STRESS_UNIT) ** 2
        loss += tc.charges_weight * (metrics.get("charges_rmse", 0.0) / 1000) ** 2
        return loss

    def train(self) -> dict[str, float]:
        tc = self.cfg.train
        t_start = time.time()
        use_stress = self.train_data.has_stress and tc.stress_weight > 0
        while self.epoch < tc.epochs:
            self.epoch += 1
            self.model.train()
            total, n = 0.0, 0
            grad_norms: list[float] = []
            n_batches = math.ceil(len(self.train_data) / tc.batch_size)
            bar = tqdm(
                self.train_data.batches(tc.batch_size, self.rng),
                total=n_batches,
                desc=f"epoch {self.epoch}/{tc.epochs}",
                disable=not self.progress,
                leave=False,
            )
            for i_batch, batch in enumerate(bar, 1):
                pred = predict_batch(self.model, batch, stress=use_stress, create_graph=True,
                                     charge_term=self.charge_term)
                loss = weighted_loss(pred, batch, tc.energy_weight, tc.forces_weight, tc.stress_weight,
                                     tc.charges_weight)
                if self.variance_head:
                    loss = loss + tc.variance_weight * self._energy_nll(batch, pred)
                if not loss.requires_grad:  # no label in this batch that the loss weights use
                    continue
                if not bool(torch.isfinite(loss.detach())):  # before the step: the weights stay finite
                    raise TrainingError(
                        f"training loss is {float(loss.detach())} at epoch {self.epoch}, batch {i_batch}: "
                        f"training stopped, no checkpoint written for this epoch. Lower train.lr (now "
                        f"{self.opt.param_groups[0]['lr']:g}) or look for unphysical structures in the data"
                    )
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                # the norm before clipping, logged whether or not it is limited (inf: no limit)
                norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm or math.inf))
                grad_norms.append(norm)
                self.opt.step()
                self.ema.update_parameters(self.model)
                total += float(loss.detach()) * int(batch[K.N_ATOMS].shape[0])
                n += int(batch[K.N_ATOMS].shape[0])
                bar.set_postfix(loss=f"{float(loss.detach()):.3g}")
            val = evaluate_dataset(self.ema.module, self.val_data, tc.batch_size, self.charge_term)
            val_loss = self._val_loss(val)
            if not math.isfinite(val_loss):
                raise TrainingError(
                    f"validation loss is {val_loss} after epoch {self.epoch} (errors {val}): the model gives "
                    "non-finite energies or forces; training stopped, no checkpoint written for this epoch. "
                    "Lower train.lr or look for unphysical structures in the data"
                )
            self.sched.step(val_loss)
            row = {
                "epoch": self.epoch,
                "lr": self.opt.param_groups[0]["lr"],
                "train_loss": total / max(n, 1),
                "val_loss": val_loss,
                # gradient norms of the epoch's batches before any clipping: a spike shows in the largest
                "grad_norm_median": float(np.median(grad_norms)) if grad_norms else float("nan"),
                "grad_norm_max": max(grad_norms, default=float("nan")),
                "grad_steps_clipped": sum(g > tc.clip_grad_norm for g in grad_norms) if tc.clip_grad_norm else 0,
                **{f"val_{k}": v for k, v in val.items()},
                "elapsed_s": time.time() - t_start,
            }
            self.history.append(row)
            improved = val_loss < self.best_val
            if improved:
                self.best_val = val_loss
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            state = self._state(self._ema_weights())
            if improved:
                self._save(self.out / CHECKPOINT_BEST, state)
            self._save(self.out / CHECKPOINT_LAST, state)
            write_metrics(self.history, self.out)
            print(
                f"epoch {self.epoch:4d}  lr {row['lr']:.2e}  train {row['train_loss']:.4g}  val {val_loss:.4g}  "
                f"E {val.get('energy_per_atom_mae', float('nan')):.2f} meV/atom  "
                f"F {val.get('forces_mae', float('nan')):.1f} meV/Å"
                + (f"  q {val['charges_mae']:.1f} me" if "charges_mae" in val else "") + ("  *" if improved else ""),
                flush=True,
            )
            if self.bad_epochs >= tc.early_stopping_patience:
                print(f"early stopping: no improvement in {self.bad_epochs} epochs")
                break
            if self.opt.param_groups[0]["lr"] <= tc.min_lr * 1.0001 and self.bad_epochs >= tc.lr_patience:
                print("stopping: learning rate reached its minimum without improvement")
                break
            if tc.max_minutes > 0 and (time.time() - t_start) / 60 > tc.max_minutes:
                print(f"stopping: wall-clock limit of {tc.max_minutes} min reached")
                break
        return self.finish()

    def finish(self) -> dict[str, float]:
        best = load_checkpoint_model(self.out / CHECKPOINT_BEST)
        results: dict[str, Any] = {"val": evaluate_dataset(best, self.val_data, charge_term=self.charge_term)}
        if self.test_data is not None:
            results["test"] = evaluate_dataset(best, self.test_data, charge_term=self.charge_term)
        results["epochs"] = self.epoch
        results["train_seconds"] = self.history[-1]["elapsed_s"] if self.history else 0.0
        write_atomic(self.out / TEST_METRICS, json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
        return results
