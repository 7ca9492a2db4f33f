"""A metric gate: stop as soon as every threshold passes; flag the run if none did."""

from __future__ import annotations

from epochal.callbacks.base import Callback
from epochal.decisions import Save, Stop
from epochal.errors import ConfigError


class Gate(Callback):
    """Thresholds on evaluation metrics: ``above`` must be exceeded, ``below`` undercut, strictly.

    On the first pass it asks for checkpoint_gate.pt and, unless ``stop`` is off, for
    training to stop. ``result()`` is what result.json records either way.
    """

    key = "gate"

    def __init__(self, above: dict[str, float], below: dict[str, float], stop: bool = True):
        self.above, self.below, self.stop = dict(above), dict(below), stop
        self.passed = False
        self.passed_epoch: int | None = None
        self.last: dict[str, float] = {}

    def check(self, metrics: dict[str, float]) -> bool:
        missing = [m for m in [*self.above, *self.below] if m not in metrics]
        if missing:
            raise ConfigError(f"gate: {missing[0]!r} is not an evaluation metric; allowed: {', '.join(metrics)}")
        return all(metrics[m] > v for m, v in self.above.items()) and all(metrics[m] < v for m, v in self.below.items())

    def on_eval_end(self, run, metrics: dict[str, float]) -> list:
        self.last = {m: metrics[m] for m in [*self.above, *self.below] if m in metrics}
        if self.passed or not self.check(metrics):
            return []
        self.passed, self.passed_epoch = True, run.state.epoch
        return [Save("gate"), Stop(f"gate passed at epoch {self.passed_epoch}")] if self.stop else [Save("gate")]

    def describe(self) -> str:
        parts = [f"{m} > {v}" for m, v in self.above.items()] + [f"{m} < {v}" for m, v in self.below.items()]
        return " and ".join(parts)

    def result(self) -> dict:
        meta = {"gate_passed": self.passed, "gate": self.describe(), "gate_epoch": self.passed_epoch}
        if not self.passed:
            meta["failure_reason"] = f"gate not passed ({self.describe()}) by the end of training"
        meta.update({f"final_{m}": v for m, v in self.last.items()})
        return {"metadata": meta}

    def state_dict(self) -> dict:
        return {"passed": self.passed, "passed_epoch": self.passed_epoch, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.passed, self.passed_epoch, self.last = state["passed"], state["passed_epoch"], state["last"]
