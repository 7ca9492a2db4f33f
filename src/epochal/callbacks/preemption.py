"""Preemption as a policy: a remembered signal becomes a checkpoint, status preempted, and a stop."""

from __future__ import annotations

from epochal.callbacks.base import Callback
from epochal.decisions import Save, Stop
from epochal.signals import PreemptionSignals


class Preemption(Callback):
    """Checked after every step, at the start (a signal during setup) and at each epoch end (one during
    evaluation): a host flag, so checking costs no synchronisation."""

    def __init__(self, signals: PreemptionSignals):
        self.signals = signals
        self.acted = False

    def _check(self, run) -> list | None:
        if self.signals.received is None or self.acted:
            return None
        self.acted = True
        return [Stop(f"preempted by {self.signals.name} at step {run.state.step}", "preempted"),
                Save("preempt", wait=True)]

    def on_fit_start(self, run) -> list | None:
        return self._check(run)

    def on_step_end(self, run) -> list | None:
        return self._check(run)

    def on_epoch_end(self, run) -> list | None:
        return self._check(run)
