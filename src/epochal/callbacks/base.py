"""The callback protocol: policy and listeners, never numerics.

Seven events, called in this order by ``loop.fit`` with the running ``Run`` first:

    on_fit_start(run)
      on_epoch_start(run)
        on_step_end(run)              after every optimizer step; device tensors only, no host values
        on_log(run, step, records)    every log_every steps: one record per step since the last call
                                      (step, epoch, lr, loss, loss components, grad_norm), already on the host
      on_eval_end(run, metrics)       after an evaluation (run.state.epoch is the epoch just finished)
      on_epoch_end(run)
    on_fit_end(run)                   after the final checkpoint and the test metrics

An event returns ``None`` or decisions (``epochal.decisions``: Save, Stop, RollBack),
which the loop carries out in one place; a callback never changes the run's course
any other way and never reads another callback's attributes. What it may read is
public: ``run.state`` (epoch, step, curves, metrics, status), ``run.model``,
``run.config``, ``run.dir``, ``run.eval_context``; ``run.evaluating()`` evaluates with
the evaluation weights.

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
