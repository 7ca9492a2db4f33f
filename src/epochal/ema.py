"""``epochal.EMAModel``: an exponential moving average of a model's weights, with a swap for evaluation.

    ema = epochal.EMAModel(model, decay=0.999)
    ...after each optimizer step:   ema.update(model)
    ema.store(model); ema.copy_to(model)     # evaluate or sample with the averaged weights
    ...
    ema.restore(model)                       # the training weights, exactly as they were
    with ema.swapped(model): ...             # the same three calls as a block

The EMA callback (``callbacks/ema.py``) is this class listening to the loop.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMAModel:
    """shadow <- d * shadow + (1 - d) * weights at each ``update``.

    With ``warmup`` the decay is min(decay, (1 + t) / (10 + t)) at update t, so a
    0.9999 average is not dominated by the initial weights in short runs.
    Buffers (e.g. batch-norm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMAModel: decay {decay}; allowed: 0 <= decay <= 1")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.state_dict().items()}
        self._param_names = [n for n, p in model.named_parameters()]
        self.backup: dict[str, torch.Tensor] | None = None  # the training weights while the EMA ones are in

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

    def store(self, model: nn.Module) -> None:
        """Keep a copy of the model's weights for ``restore`` (the backup)."""
        self.backup = {name: p.detach().clone() for name, p in model.state_dict().items()}

    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into the model (call ``store`` first to get the training ones back)."""
        model.load_state_dict(self.shadow)

    def restore(self, model: nn.Module) -> None:
        """Put back the weights ``store`` kept, bit for bit."""
        if self.backup is None:
            raise RuntimeError("EMAModel.restore: nothing stored; call store(model) before copy_to(model)")
        model.load_state_dict(self.backup)
        self.backup = None  # a second restore would silently undo training done since

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """The model carries the EMA weights inside the block and its own weights after."""
        self.store(model)
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
