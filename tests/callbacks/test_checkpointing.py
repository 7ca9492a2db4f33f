from types import SimpleNamespace

from epochal.callbacks import checkpointing
from epochal.callbacks.checkpointing import Checkpointing
from epochal.config import CheckpointConfig
from epochal.decisions import Save
from epochal.state import TrainState


def test_every_minutes_asks_for_a_save_once_the_interval_has_passed(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    run = SimpleNamespace(state=TrainState())
    policy = Checkpointing(CheckpointConfig(every_minutes=2.0), max_epochs=10)
    policy.on_fit_start(run)
    decided = []
    for seconds, step in ((60, 1), (61, 2), (100, 3)):
        now[0] += seconds
        run.state.step = step
        decided.append(policy.on_step_end(run))
    assert decided == [None, Save("step"), None]


def test_every_steps_every_epochs_and_the_last_epoch():
    run = SimpleNamespace(state=TrainState())
    policy = Checkpointing(CheckpointConfig(every_steps=3, every_epochs=2), max_epochs=5)
    steps = []
    for step in range(1, 7):
        run.state.step = step
        steps.append(policy.on_step_end(run))
    assert steps == [None, None, Save("step"), None, None, Save("step")]
    epochs = []
    for epoch in range(1, 6):
        run.state.epoch = epoch
        epochs.append(policy.on_epoch_end(run))
    assert epochs == [None, Save("epoch"), None, Save("epoch"), Save("epoch")]  # epoch 5 is the last
