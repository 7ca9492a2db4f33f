"""A metric gate (seed 001): stop as soon as every threshold passes; flag the run if none did."""

from __future__ import annotations

from epochal.callbacks.base import Callback
from epochal.errors import ConfigError


class Gate(Callback):
    """Thresholds on evaluation metrics: ``above`` must be exceeded, ``below`` undercut, strictly.

    On a pass, training stops and ``passed_now`` tells the checkpointer to keep
    checkpoint_gate.pt. ``metadata()`` is what result.json records either way.
    """

    key = "gate"

    def __init__(self, above: dict[str, float], below: dict[str, float]):
        self.above, self.below = dict(above), dict(below)
        self.passed = False
        self.passed_epoch: int | None = None
        self.passed_now = False
        self.last: dict[str, float] = {}

    def check(self, metrics: dict[str, float]) -> bool:
        missing = [m for m in [*self.above, *self.below] if m not in metrics]
        if missing:
            raise ConfigError(f"gate: {missing[0]!r} is not an evaluation metric; allowed: {', '.join(metrics)}")
        return all(metrics[m] > v for m, v in self.above.items()) and all(metrics[m] < v for m, v in self.below.items())

    def on_epoch_start(self, fit) -> None:
        self.passed_now = False

    def on_eval_end(self, fit, metrics: dict[str, float]) -> None:
        self.last = {m: metrics[m] for m in [*self.above, *self.below] if m in metrics}
        if not self.passed and self.check(metrics):
            self.passed, self.passed_now, self.passed_epoch = True, True, fit.state.epoch + 1
            fit.state.stop(f"gate passed at epoch {self.passed_epoch}")

    def describe(self) -> str:
        parts = [f"{m} > {v}" for m, v in self.above.items()] + [f"{m} < {v}" for m, v in self.below.items()]
        return " and ".join(parts)

    def metadata(self) -> dict:
        meta = {"gate_passed": self.passed, "gate": self.describe(), "gate_epoch": self.passed_epoch}
        if not self.passed:
            meta["failure_reason"] = f"gate not passed ({self.describe()}) by the end of training"
        meta.update({f"final_{m}": v for m, v in self.last.items()})
        return meta

    def state_dict(self) -> dict:
        return {"passed": self.passed, "passed_epoch": self.passed_epoch, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.passed, self.passed_epoch, self.last = state["passed"], state["passed_epoch"], state["last"]
