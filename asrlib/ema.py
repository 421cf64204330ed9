"""An exponential moving average (EMA) of the model's weights, kept beside the training weights.

    trainer.ema_decay = 0.999     # 0 (the default) keeps no average

After every optimiser update each floating-point parameter and buffer of the model moves its
average towards the new value:

    avg <- d * avg + (1 - d) * w,    d = min(ema_decay, (1 + n) / (10 + n))

where n counts the updates averaged before this one. The warm-up of ``d`` (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``) keeps the first average from being mostly the
random initialisation: d is 0.1 at the first update, 0.5 at the 9th, and reaches 0.999 after
about 9000. ``1 / (1 - d)`` is the number of recent updates the average mostly remembers.

The training weights keep training. The average is what the trainer evaluates (the training
weights are evaluated beside it, one more pass over the validation sets, and logged as
``<set>/no_ema/…``, so a run shows what the average gains), what picks and fills
``best_model/``, and what ``asrlib evaluate``/``transcribe``/``export``/``average`` read from a
checkpoint (``checkpoint.inference_state``). Checkpoints hold both, so a resumed run continues
both exactly. Non-float buffers are copied, not averaged. The average changes nothing that
trains: a run with it updates the same weights, bit for bit, as a run without it.

Why: late in a run the weights wander around a minimum from one update to the next; their
average usually sits nearer its centre (NeMo's EMA callback and icefall's averaged model do
this during training; ``asrlib average`` does it afterwards over saved checkpoints).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the update that follows ``updates`` earlier ones."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightEMA:
    """The running average of ``model``'s floating-point state, held in a copy of the model.

    ``self.module`` is that copy (eval mode, no gradients): evaluate or export it like the model.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after an optimiser step)."""
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(current[name].detach(), weight)  # avg + (1 - d) * (w - avg)
            else:
                avg.copy_(current[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "model": self.module.state_dict()}  # the decay is the config's

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
