"""The callback protocol: policy and listeners, never numerics.

Seven events, heard in the order ``loop.py``'s docstring shows (the loop's contract,
written once there): on_fit_start, on_epoch_start, on_step_end, on_log, on_eval_end,
on_epoch_end, on_fit_end. Each receives the run's read-only view first (``view.RunView``:
what a callback may read, listed there); ``on_log`` also the records fetched since the
last one (step, epoch, lr, loss, loss components, grad_norm, throughput; on the host),
``on_eval_end`` the metrics of the evaluation.

An event returns ``None`` or decisions (``epochal.decisions``: Save, Stop, RollBack);
a callback never changes the run's course any other way and never reads another
callback's attributes.

A callback with state sets ``key`` and implements ``state_dict``/``load_state_dict``:
it is registered under that key and checkpointed with everything else.
"""

from __future__ import annotations

import contextlib
from typing import Any

from epochal.decisions import Decision

Returned = Decision | list[Decision] | None

EVENTS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_log", "on_eval_end", "on_epoch_end", "on_fit_end")


class Callback:
    # Name of this callback's state in the registry and in checkpoints; empty: stateless.
    key: str = ""

    def on_fit_start(self, run) -> Returned: ...
    def on_epoch_start(self, run) -> Returned: ...
    def on_step_end(self, run) -> Returned: ...
    def on_log(self, run, step: int, records: list[dict[str, float]]) -> Returned: ...
    def on_eval_end(self, run, metrics: dict[str, float]) -> Returned: ...
    def on_epoch_end(self, run) -> Returned: ...
    def on_fit_end(self, run) -> Returned: ...

    def eval_weights(self, model) -> contextlib.AbstractContextManager | None:
        """Weights to evaluate with instead of the trained ones (EMA); None: the trained ones."""
        return None

    def result(self) -> dict[str, Any]:
        """What this callback adds to result.json: top-level keys, or a "metadata" dict that is merged."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def handles(callback: Callback, event: str) -> bool:
    """Whether ``callback`` does something on ``event`` (its class overrides the no-op)."""
    own = getattr(type(callback), event, None)
    return own is not None and own is not getattr(Callback, event)
