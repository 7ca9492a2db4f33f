from types import SimpleNamespace

from epochal.callbacks import checkpointing
from epochal.callbacks.checkpointing import Checkpointing
from epochal.config import CheckpointConfig, TrainConfig
from epochal.state import TrainState


def fake_fit():
    saved = []
    fit = SimpleNamespace(state=TrainState(), gate=None, best=None, config=SimpleNamespace(train=TrainConfig()),
                          save_checkpoint=lambda name, kind, links=(): saved.append((name, kind, links)))
    return fit, saved


def test_every_minutes_saves_once_the_interval_has_passed(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    fit, saved = fake_fit()
    policy = Checkpointing(CheckpointConfig(every_minutes=2.0))
    policy.on_fit_start(fit)
    for seconds, step in ((60, 1), (61, 2), (100, 3)):
        now[0] += seconds
        fit.state.step = step
        policy.on_step_end(fit)
    assert saved == [("checkpoint_step_00000002.pt", "step", ())]


def test_every_steps_and_epoch_links():
    fit, saved = fake_fit()
    policy = Checkpointing(CheckpointConfig(every_steps=3, every_epochs=2))
    for step in range(1, 7):
        fit.state.step = step
        policy.on_step_end(fit)
    fit.best = SimpleNamespace(improved_now=True)
    fit.state.epoch = 2
    policy.on_epoch_end(fit)
    fit.state.epoch = 3
    policy.on_epoch_end(fit)  # not an epoch checkpoint: best.pt is written on its own
    assert saved == [("checkpoint_step_00000003.pt", "step", ()), ("checkpoint_step_00000006.pt", "step", ()),
                     ("checkpoint_epoch_0002.pt", "epoch", ("best.pt",)), ("best.pt", "best", ())]
