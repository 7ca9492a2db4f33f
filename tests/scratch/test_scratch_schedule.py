"""LRScheduler against epochal's torch schedule through LambdaLR, every step."""

import numpy as np
import pytest
import torch

from epochal.optim import make_schedule
from epochal.scratch import AdamW, LRScheduler, ScratchValueError

CASES = [
    # schedule, warmup, total, min_lr
    ("cosine", 100, 1000, 0.0),
    ("cosine", 10, 250, 1e-4),
    ("cosine", 0, 50, 0.0),
    ("cosine", 50, 50, 1e-4),  # all warmup
    ("linear", 100, 1000, 0.0),
    ("linear", 7, 64, 2.5e-4),
    ("linear", 0, 1, 0.0),
    ("constant", 20, 100, 0.0),
]


@pytest.mark.parametrize("schedule, warmup, total, min_lr", CASES)
def test_lr_equals_lambda_lr_at_every_step(schedule, warmup, total, min_lr):
    base_lr = 1e-3
    torch_opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=base_lr)
    torch_sched = torch.optim.lr_scheduler.LambdaLR(
        torch_opt, make_schedule(schedule, warmup, total, min_lr / base_lr)
    )
    opt = AdamW([np.zeros(1)], lr=base_lr)
    sched = LRScheduler(opt, warmup_steps=warmup, total_steps=total, min_lr=min_lr, schedule=schedule)
    assert opt.lr == torch_opt.param_groups[0]["lr"]  # at construction: base_lr * f(0)
    assert sched.get_lr() == opt.lr
    for _ in range(total + 20):  # and past the end, where both hold min_lr
        torch_opt.step()
        torch_sched.step()
        returned = sched.step()
        assert returned == opt.lr == sched.get_lr() == torch_opt.param_groups[0]["lr"]
    assert opt.lr == pytest.approx(min_lr if schedule != "constant" else base_lr, abs=1e-15)


def test_warmup_starts_at_zero_and_peaks_at_base_lr():
    opt = AdamW([np.zeros(1)], lr=0.1)
    sched = LRScheduler(opt, warmup_steps=4, total_steps=10)
    assert opt.lr == 0.0
    lrs = [sched.step() for _ in range(4)]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1])


def test_state_dict_round_trip():
    opt = AdamW([np.zeros(1)], lr=1e-2)
    sched = LRScheduler(opt, warmup_steps=5, total_steps=40, min_lr=1e-3, schedule="linear")
    for _ in range(17):
        sched.step()
    state = sched.state_dict()
    other_opt = AdamW([np.zeros(1)], lr=1e-2)
    other = LRScheduler(other_opt, warmup_steps=1, total_steps=2)
    other.load_state_dict(state)
    assert other_opt.lr == opt.lr and other.last_step == 17
    for _ in range(30):
        assert other.step() == sched.step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup_steps=101, total_steps=100),
         r"warmup_steps \(101\) > total_steps \(100\); .*0 <= warmup_steps <= total_steps"),
        (dict(warmup_steps=0, total_steps=10, schedule="step"),
         "unknown schedule 'step'; allowed: 'cosine', 'linear', 'constant'"),
        (dict(warmup_steps=-1, total_steps=10), "warmup_steps must be an integer >= 0"),
        (dict(warmup_steps=1.5, total_steps=10), "warmup_steps must be an integer >= 0"),
        (dict(warmup_steps=0, total_steps=0), "total_steps must be an integer >= 1"),
        (dict(warmup_steps=0, total_steps=10, min_lr=1.0), r"min_lr must be in \[0, base lr = 0.001\]"),
        (dict(warmup_steps=0, total_steps=10, min_lr=-1e-5), "min_lr must be in"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, message):
    opt = AdamW([np.zeros(1)], lr=1e-3)
    with pytest.raises(ScratchValueError, match=message):
        LRScheduler(opt, **kwargs)
    assert opt.lr == 1e-3  # untouched


def test_load_state_dict_validates():
    opt = AdamW([np.zeros(1)], lr=1e-3)
    sched = LRScheduler(opt, warmup_steps=2, total_steps=10)
    state = sched.state_dict() | {"warmup_steps": 20}
    with pytest.raises(ValueError, match="warmup_steps"):
        sched.load_state_dict(state)
    assert sched.warmup_steps == 2
