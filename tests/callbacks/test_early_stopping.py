from types import SimpleNamespace

from epochal.callbacks.early_stopping import EarlyStopping
from epochal.decisions import Stop
from epochal.state import TrainState


def test_call_returns_improvement_and_plateau_triggers_stop():
    stopper = EarlyStopping("val", mode="min", patience=2)
    assert stopper(1.0) is True
    assert stopper(0.5) is True
    assert stopper(0.5) is False and not stopper.should_stop
    assert stopper(0.7) is False and stopper.should_stop


def test_min_delta_and_max_mode():
    stopper = EarlyStopping("acc", mode="max", patience=1, min_delta=0.1)
    assert stopper(0.5)
    assert not stopper(0.55)  # better, but by less than min_delta
    assert stopper.should_stop


def test_improvement_resets_the_counter():
    stopper = EarlyStopping("val", mode="min", patience=2)
    for value in (1.0, 1.1, 0.9, 1.0):
        stopper(value)
    assert stopper.bad_evals == 1 and not stopper.should_stop


def test_callback_decides_to_stop_with_a_reason_and_round_trips_state():
    run = SimpleNamespace(state=TrainState())
    stopper = EarlyStopping("val", patience=1)
    assert stopper.on_eval_end(run, {"val": 1.0}) is None
    decision = stopper.on_eval_end(run, {"val": 2.0})
    assert isinstance(decision, Stop) and decision.status == "completed" and "val did not improve" in decision.reason
    copy = EarlyStopping("val", patience=1)
    copy.load_state_dict(stopper.state_dict())
    assert (copy.best, copy.bad_evals) == (1.0, 1)
