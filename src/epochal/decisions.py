"""Decisions: what a policy asks the loop to do. Values, not side effects.

A callback's event returns ``None`` (carry on), one decision, or a list of them.
The loop gathers every decision of a moment and carries them out in one place,
``loop.act``, in this order:

- ``RollBack(reason, lr_factor)``: reload the newest valid checkpoint and train on
  from there with the learning rate at ``lr_factor`` times the configured one.
  It supersedes everything else decided at that moment.
- ``Stop(reason, status)``: end training after this step or epoch; the first reason wins.
  A ``failed`` run saves nothing from then on (not the Saves of that moment, no final
  checkpoint): its state is not to be trusted, and ``last.pt`` stays the last good one.
- ``Save(kind)``: write one checkpoint now. Saves decided together share one file:
  at an epoch boundary ``checkpoint_epoch_NNNN.pt``, mid-epoch ``checkpoint_step_NNNNNNNN.pt``;
  ``best`` and ``gate`` add the links ``best.pt`` and ``checkpoint_gate.pt``; every save
  moves ``last.pt``.
- ``Split(micro_batches, reason)``: the step ran out of memory (``train.microbatch = "auto"``): its
  partial gradients and the random numbers it drew are undone, and the same batch is trained
  again in ``micro_batches`` micro-batches per accumulation chunk, from then on. Decided by the
  run itself, never by a callback; the loop retries the step after acting on it.
- ``Continue``: nothing to do; the same as returning ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union


@dataclass(frozen=True)
class Continue:
    pass


@dataclass(frozen=True)
class Save:
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
class Split:
    micro_batches: int  # per accumulation chunk, from this step on
    reason: str


Decision = Union[Continue, Save, RollBack, Stop, Split]
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
