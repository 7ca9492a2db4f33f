"""Learning-rate warmup and decay for the NumPy AdamW, with LambdaLR's semantics.

The schedule itself is not defined here: it is ``epochal.optim.make_schedule``,
the same function the torch path hands to ``torch.optim.lr_scheduler.LambdaLR``,
so there is one definition of every schedule in epochal. This class only applies
it the way LambdaLR does::

    at construction:  optimizer.lr = base_lr * f(0)        (0 when warming up)
    each step():      step += 1; optimizer.lr = base_lr * f(step)

with ``f`` the multiplier of the peak (base) learning rate and
``min_lr_ratio = min_lr / base_lr``. Call ``scheduler.step()`` after
``optimizer.step()``, as with torch. Past ``total_steps`` the lr stays at ``min_lr``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from epochal.optim import SCHEDULES, make_schedule
from epochal.scratch.adamw import AdamW
from epochal.scratch.errors import ScratchValueError


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class LRScheduler:
    """Linear warmup to the optimizer's lr, then cosine or linear decay to ``min_lr``.

    ``schedule`` is one of ``epochal.optim.SCHEDULES``: 'cosine', 'linear' or
    'constant' (warmup, then the peak lr). The peak lr is the optimizer's lr
    when the scheduler is made.
    """

    def __init__(
        self,
        optimizer: AdamW,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
        schedule: str = "cosine",
    ):
        self.optimizer = optimizer
        self._configure(float(optimizer.lr), warmup_steps, total_steps, min_lr, schedule)
        self.last_step = 0  # scheduler steps taken; LambdaLR's last_epoch
        self.optimizer.lr = self.get_lr()

    def _configure(
        self, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float, schedule: str
    ) -> None:
        """Check the settings and build the schedule; raises before changing anything."""
        if schedule not in SCHEDULES:
            raise ScratchValueError(
                f"unknown schedule {schedule!r}; allowed: {', '.join(repr(k) for k in SCHEDULES)}"
            )
        if not _is_int(total_steps) or total_steps < 1:
            raise ScratchValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        if not _is_int(warmup_steps) or warmup_steps < 0:
            raise ScratchValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if warmup_steps > total_steps:
            raise ScratchValueError(
                f"warmup_steps ({warmup_steps}) > total_steps ({total_steps}); "
                "warmup must fit in training: 0 <= warmup_steps <= total_steps"
            )
        if not 0.0 <= min_lr <= base_lr:
            raise ScratchValueError(
                f"min_lr must be in [0, base lr = {base_lr}] (the floor of the decay), got {min_lr}"
            )
        self.base_lr = base_lr
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        self.schedule = schedule
        self.min_lr_ratio = self.min_lr / base_lr if base_lr > 0 else 0.0
        self._multiplier = make_schedule(schedule, self.warmup_steps, self.total_steps, self.min_lr_ratio)

    def step(self) -> float:
        """Advance one optimizer step and set the optimizer's lr for the next update; return it."""
        self.last_step += 1
        self.optimizer.lr = self.base_lr * self._multiplier(self.last_step)
        return self.optimizer.lr

    def get_lr(self) -> float:
        """The lr the next ``optimizer.step()`` will use."""
        return self.base_lr * self._multiplier(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr": self.min_lr,
            "schedule": self.schedule,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` and set the optimizer's lr to match."""
        self._configure(
            float(state["base_lr"]), state["warmup_steps"], state["total_steps"],
            state["min_lr"], state["schedule"],
        )
        self.last_step = int(state["last_step"])
        self.optimizer.lr = self.get_lr()
