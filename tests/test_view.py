"""The run as callbacks see it: a narrow, read-only view (view.py)."""

import pytest

from epochal.callbacks.base import EVENTS, Callback
from epochal.view import STATE_FIELDS, ReadOnlyError, RunView

# The view's surface: a change here is a change of the callback API (README "Callbacks and the loop").
SURFACE = {"state", "config", "model", "device", "dir", "folder", "eval_context", "steps_per_epoch", "is_main", "lr",
           "data_wait_seconds", "compile_seconds", "data_order_sha256", "evaluating", "print", "result"}
STATE = {"epoch", "step", "batch_in_epoch", "epoch_steps", "metrics", "curves", "eval_epochs", "eval_steps", "status",
         "stop_reason", "stopped", "val_loss", "micro_batches", "train_seconds", "epoch_train_loss",
         "epoch_grad_norm"}


def test_the_view_s_surface_is_what_the_docs_list():
    import epochal.view

    public = {name for name in dir(RunView) if not name.startswith("_")}
    assert public == SURFACE
    assert set(STATE_FIELDS) == STATE
    documented = epochal.view.__doc__
    assert all(f"run.{name}" in documented for name in SURFACE), SURFACE
    assert all(f" {field}" in documented for field in STATE), STATE


class Watching(Callback):
    """A user's callback: every event gets the view; it reads what built-in callbacks read and may write none."""

    def __init__(self):
        self.seen: dict[str, type] = {}
        self.refused: list[str] = []
        self.read: dict = {}

    def _note(self, run, event):
        self.seen[event] = type(run)
        for attempt in (lambda: setattr(run, "model", None), lambda: setattr(run.state, "step", 0),
                        lambda: setattr(run.state, "status", "completed")):
            try:
                attempt()
            except ReadOnlyError as err:
                self.refused.append(str(err).split(":")[0])

    def on_fit_start(self, run):
        self._note(run, "on_fit_start")

    def on_epoch_start(self, run):
        self._note(run, "on_epoch_start")

    def on_step_end(self, run):
        self.seen["on_step_end"] = type(run)

    def on_log(self, run, step, records):
        self._note(run, "on_log")

    def on_eval_end(self, run, metrics):
        self._note(run, "on_eval_end")
        with run.evaluating() as model:
            self.read["eval_mode"] = not model.training
        self.read.update(lr=run.lr, steps_per_epoch=run.steps_per_epoch, is_main=run.is_main,
                         val_loss=run.state.val_loss, order=run.data_order_sha256(run.state.epoch - 1))

    def on_epoch_end(self, run):
        self._note(run, "on_epoch_end")

    def on_fit_end(self, run):
        self._note(run, "on_fit_end")
        self.read["result_status"] = run.result()["status"]


def test_every_event_hands_a_callback_the_read_only_view(run_toy):
    watching = Watching()
    result = run_toy(callbacks=[watching], settings={"train.max_epochs": 2})
    assert result.status == "completed"
    assert watching.seen == {event: RunView for event in EVENTS}
    assert set(watching.refused) == {"run.model", "run.state.step", "run.state.status"}
    assert watching.read["eval_mode"] and watching.read["is_main"] and watching.read["steps_per_epoch"] == 4
    assert watching.read["val_loss"] is not None and len(watching.read["order"]) == 64
    assert watching.read["lr"] > 0 and watching.read["result_status"] == "completed"


def test_the_state_view_names_what_may_be_read():
    from epochal.state import TrainState
    from epochal.view import StateView

    view = StateView(TrainState(step=3))
    assert view.step == 3 and view.epoch_train_loss() == 0.0
    with pytest.raises(AttributeError, match="run.state has no 'grad_norm_sum'; readable: batch_in_epoch"):
        view.grad_norm_sum
