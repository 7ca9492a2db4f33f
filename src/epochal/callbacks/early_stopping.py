"""Patience-based early stopping on an evaluation metric."""

from __future__ import annotations

import math

from epochal.callbacks.base import Callback
from epochal.decisions import Stop
from epochal.errors import ConfigError


class EarlyStopping(Callback):
    """``stopper(value)`` returns whether the value improved; ``should_stop`` says when to stop.

    An improvement must beat the best by more than ``min_delta``. After
    ``patience`` evaluations in a row without one, ``should_stop`` turns true.
    """

    key = "early_stopping"

    def __init__(self, metric: str, mode: str = "min", patience: int = 20, min_delta: float = 0.0):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0

    def __call__(self, value: float) -> bool:
        improved = (value < self.best - self.min_delta) if self.mode == "min" else (value > self.best + self.min_delta)
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= max(1, self.patience)

    def on_eval_end(self, run, metrics: dict[str, float]) -> Stop | None:
        if self.metric not in metrics:
            raise ConfigError(f"early_stop.metric: {self.metric!r} is not an evaluation metric; allowed: {', '.join(metrics)}")
        self(metrics[self.metric])
        if self.should_stop:
            return Stop(f"early stopping: {self.metric} did not improve for {self.bad_evals} evaluations")
        return None

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]
