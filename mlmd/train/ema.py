"""The exponential moving average of the trained weights, the copy of the potential that is validated and saved."""

from __future__ import annotations

from typing import Any

import torch

from mlmd.model.potential import ShortRangePotential, potential_from_hparams


class ExponentialMovingAverage:
    """A second copy of the potential whose weights trail the trained ones: w <- d w + (1 - d) w_train.

    (torch's AveragedModel deep-copies the module, which e3nn's compiled submodules do not allow.)
    """

    def __init__(self, model: ShortRangePotential, decay: float) -> None:
        self.decay = float(decay)
        self.module = potential_from_hparams(model.hparams).to(next(model.parameters()).dtype)
        self.module.load_state_dict(model.state_dict())
        self.module.eval()
        self.n_updates = 0

    @torch.no_grad()
    def update_parameters(self, model: ShortRangePotential) -> None:
        self.n_updates += 1
        # warm-up as in common EMA practice: early on the average follows the model more closely
        d = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        for (_, e), (_, p) in zip(self.module.state_dict().items(), model.state_dict().items()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "n_updates": self.n_updates}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.module.load_state_dict(st["weights"])
        self.n_updates = int(st["n_updates"])
