"""The callback protocol: policy that reacts to the loop, never numerics.

Six events, named symmetrically, each called with the running ``Fit`` (model,
optimizer, state, run folder, task context). ``on_eval_end`` also gets the
evaluation metrics. A callback stops training with ``fit.state.stop(reason)``,
never with an exception. Callbacks with state (counters, best values, shadow
weights) implement ``state_dict``/``load_state_dict`` so that resume restores them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epochal.loop import Fit


class Callback:
    # Key of this callback's state inside a checkpoint; unique per run.
    key: str = ""

    def on_fit_start(self, fit: "Fit") -> None: ...
    def on_epoch_start(self, fit: "Fit") -> None: ...
    def on_step_end(self, fit: "Fit") -> None: ...
    def on_eval_end(self, fit: "Fit", metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, fit: "Fit") -> None: ...
    def on_fit_end(self, fit: "Fit") -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
