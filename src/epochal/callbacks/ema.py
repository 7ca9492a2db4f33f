"""Exponential moving average of the weights (seed 004): evaluate and export with it."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from epochal.callbacks.base import Callback


class EMA(Callback):
    """shadow <- d * shadow + (1 - d) * weights after every optimizer step.

    With ``warmup`` the decay is min(decay, (1 + t) / (10 + t)) at update t, so a
    0.9999 average is not dominated by the initial weights in short runs.
    Buffers (e.g. batch-norm statistics) are copied, not averaged.
    """

    key = "ema"

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.state_dict().items()}
        self._param_names = [n for n, p in model.named_parameters()]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        state = model.state_dict()
        names = self._param_names
        torch._foreach_lerp_([self.shadow[n] for n in names], [state[n].detach() for n in names], 1.0 - decay)
        for name, value in state.items():
            if name not in names:
                self.shadow[name].copy_(value)
        self.updates += 1

    def on_step_end(self, run) -> None:
        self.update(run.model)

    def eval_weights(self, model: nn.Module):
        return self.swapped(model)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """The model carries the EMA weights inside the block and its own weights after."""
        backup = {name: p.detach().clone() for name, p in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(backup)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
