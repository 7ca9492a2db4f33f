"""What follows a non-finite loss or gradient norm (train.nan_policy).

The step itself was already skipped on the device (step.py); the host learns of it
in the values fetched at the next log interval and decides: ``stop`` (status
failed, the step in the reason), ``skip`` (count it and go on) or ``rollback``
(reload the newest valid checkpoint with the learning rate scaled, at most
``max_rollbacks`` times). The counts are this policy's state: a rollback keeps
them, a resume restores them.
"""

from __future__ import annotations

import math
import warnings

from epochal.callbacks.base import Callback
from epochal.decisions import RollBack, Stop


class NanPolicy(Callback):
    key = "nan_policy"

    def __init__(self, policy: str, max_rollbacks: int, lr_scale: float, checked: tuple[str, ...]):
        self.policy, self.max_rollbacks, self.lr_scale, self.checked = policy, max_rollbacks, lr_scale, checked
        self.bad_steps: list[int] = []
        self.rollbacks = 0

    def on_log(self, run, step: int, records: list[dict[str, float]]):
        bad = [r["step"] for r in records if not all(math.isfinite(r[name]) for name in self.checked)]
        if not bad:
            return None
        self.bad_steps.extend(bad)
        reason = f"non-finite loss or gradient norm at step {bad[0]}"
        if self.policy == "skip":
            warnings.warn(f"{reason}: optimizer step skipped ({len(self.bad_steps)} so far)", stacklevel=2)
            return None
        if self.policy == "rollback" and self.rollbacks < self.max_rollbacks:
            self.rollbacks += 1
            return RollBack(reason, lr_factor=self.lr_scale**self.rollbacks)
        return Stop(reason if self.policy == "stop" else f"{reason}; rollbacks exhausted", "failed")

    def result(self) -> dict:
        return {"metadata": {"bad_steps": self.bad_steps, "rollbacks": self.rollbacks}}

    def state_dict(self) -> dict:
        return {"bad_steps": list(self.bad_steps), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.bad_steps, self.rollbacks = list(state["bad_steps"]), state["rollbacks"]
