"""TrainState and the RNG capture that exact resume needs (state.py)."""

import math
import random

import numpy as np
import torch

from epochal.state import TrainState, capture_rng, restore_rng, seed_everything


def test_the_epoch_loss_is_the_mean_of_its_finite_steps_and_zero_when_none_is():
    state = TrainState(epoch_steps=3, curves={"train_loss": [9.0, 1.0, math.nan, 3.0]})
    assert state.epoch_train_loss() == 2.0  # the last three steps, the NaN left out
    state.curves["train_loss"] = [math.nan, math.inf]
    state.epoch_steps = 2
    assert state.epoch_train_loss() == 0.0
    assert TrainState().epoch_steps == 0 and TrainState().epoch_train_loss() == 0.0


def test_train_state_round_trips_and_a_field_it_lacks_keeps_its_default():
    state = TrainState(epoch=2, batch_in_epoch=1, epoch_steps=4, step=9, curves={"train_loss": [0.5, 0.25]},
                       eval_steps=[4, 8], metrics={"m": 1.0}, stop_reason="", status="running")
    saved = state.state_dict()
    assert saved["curves"]["train_loss"].dtype == torch.float64
    saved["eval_steps"].append(99)  # a copy: the saved state does not alias the live one
    assert state.eval_steps == [4, 8]
    restored = TrainState()
    restored.load_state_dict({k: v for k, v in state.state_dict().items() if k != "train_seconds"})
    assert restored == state
    state.stop("first", "failed")
    state.stop("second", "completed")
    assert (state.stop_reason, state.status, state.stopped) == ("first", "failed", True)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_restoring_the_rng_replays_every_generator():
    seed_everything(3, deterministic=False)
    saved = capture_rng()
    first = draws()
    restore_rng(saved)
    assert draws() == first
    seed_everything(3, deterministic=False)
    assert draws() == first  # seeding is the same start again
    seed_everything(4, deterministic=False)
    assert draws() != first
    assert capture_rng()["cuda"] == [] or torch.cuda.is_available()


def test_deterministic_mode_is_switched_on_only_when_asked():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False
