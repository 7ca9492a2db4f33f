"""Exponential moving average of the weights: evaluate and export with it.

The average itself is ``epochal.EMAModel`` (ema.py); this callback updates it after
every optimizer step and hands the loop its swap for evaluation, test and export.
"""

from __future__ import annotations

from torch import nn

from epochal.callbacks.base import Callback
from epochal.ema import EMAModel


class EMA(EMAModel, Callback):
    """EMAModel as a policy: updated on_step_end, swapped in by ``run.evaluating()``; checkpointed as "ema"."""

    key = "ema"

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        EMAModel.__init__(self, model, decay, warmup)

    def on_step_end(self, run) -> None:
        self.update(run.model)

    def eval_weights(self, model: nn.Module):
        return self.swapped(model)
