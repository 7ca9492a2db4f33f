"""Decisions: what a policy asks the loop to do, as values, never side effects.

A callback's event returns ``None`` (carry on), one decision, or a list of them:
``Save``, ``Stop``, ``RollBack`` or ``Continue``. The run itself decides ``Split``
(a step ran out of memory) and ``Resume`` (a preempted run trains on). The loop
gathers the decisions of one moment and carries them out in ``loop.act``; the
rules it follows are written once, in ``loop.py``'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union


@dataclass(frozen=True)
class Continue:
    pass


@dataclass(frozen=True)
class Save:
    # epoch: at an epoch's end; step, preempt: mid-epoch; best, gate: also linked as best.pt,
    # checkpoint_gate.pt; final: after training. Saves decided together share one file.
    kind: Literal["epoch", "step", "preempt", "best", "gate", "final"]
    wait: bool = False  # block until the file is on disk: the process is about to exit


@dataclass(frozen=True)
class RollBack:
    reason: str
    lr_factor: float = 1.0  # learning rate after the rollback, relative to the configured one


@dataclass(frozen=True)
class Stop:
    reason: str
    status: Literal["completed", "preempted", "failed"] = "completed"


@dataclass(frozen=True)
class Resume:
    reason: str  # why the run had stopped (its preemption); it now trains on


@dataclass(frozen=True)
class Split:
    micro_batches: int  # per accumulation chunk, from this step on
    reason: str


Decision = Union[Continue, Save, RollBack, Stop, Split, Resume]
DECISION_TYPES = (Continue, Save, RollBack, Stop)  # what a callback may return


def as_decisions(returned: object, callback: object, event: str) -> list[Decision]:
    """What ``callback.event`` returned (not None: the loop skips those) as a list of decisions; anything
    else is a programming error."""
    items = returned if isinstance(returned, (list, tuple)) else [returned]
    for item in items:
        if not isinstance(item, DECISION_TYPES):
            raise TypeError(f"{type(callback).__name__}.{event} returned {item!r}; allowed: None, Continue, Save, "
                            "RollBack, Stop or a list of them")
    return [item for item in items if not isinstance(item, Continue)]
