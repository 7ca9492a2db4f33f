"""Best-metric tracking: which evaluation was best so far; asks for best.pt on each improvement."""

from __future__ import annotations

from epochal.callbacks.base import Callback
from epochal.decisions import Save
from epochal.errors import ConfigError


class BestMetric(Callback):
    key = "best"

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.value: float | None = None
        self.epoch: int | None = None
        self.metrics: dict[str, float] = {}

    def is_better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if self.mode == "min" else value > self.value

    def on_eval_end(self, run, metrics: dict[str, float]) -> Save | None:
        if self.metric not in metrics:
            raise ConfigError(f"checkpoint.best_metric: {self.metric!r} is not an evaluation metric; allowed: {', '.join(metrics)}")
        if not self.is_better(metrics[self.metric]):
            return None
        self.value, self.epoch, self.metrics = metrics[self.metric], run.state.epoch, dict(metrics)
        return Save("best")

    def result(self) -> dict:
        return {"best": {"metric": self.metric, "mode": self.mode, "value": self.value, "epoch": self.epoch,
                         "metrics": self.metrics}}

    def state_dict(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "metrics": self.metrics}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.epoch, self.metrics = state["value"], state["epoch"], state["metrics"]
