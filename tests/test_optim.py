import math

import pytest
import torch
from torch import nn

from epochal.optim import build_adamw, make_schedule, param_groups, resolve_warmup_steps


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_starts_at_zero_and_reaches_peak(kind):
    f = make_schedule(kind, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_ends_at_min_ratio_at_total_steps(kind):
    f = make_schedule(kind, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_midpoint_is_halfway_between_peak_and_floor():
    f = make_schedule("cosine", warmup_steps=0, total_steps=100, min_lr_ratio=0.2)
    assert f(50) == pytest.approx(0.2 + 0.5 * 0.8 * (1 + math.cos(math.pi / 2)))


def test_warmup_fraction_is_of_total_optimizer_steps():
    assert resolve_warmup_steps(total_steps=500, warmup_fraction=0.1, warmup_steps=None) == 50
    assert resolve_warmup_steps(total_steps=500, warmup_fraction=0.1, warmup_steps=7) == 7


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.linear = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)


def test_param_groups_exclude_bias_norm_and_embedding_from_decay():
    model = Tiny()
    decay, keep = param_groups(model, 0.01, decay_all=False)
    assert decay["weight_decay"] == 0.01 and keep["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.linear.weight)}
    assert {id(p) for p in keep["params"]} == {id(model.embed.weight), id(model.linear.bias),
                                              id(model.norm.weight), id(model.norm.bias)}


def test_decay_all_puts_every_parameter_in_one_group():
    (group,) = param_groups(Tiny(), 0.01, decay_all=True)
    assert len(group["params"]) == 5


def test_found_inf_skips_the_update_and_the_step_count():
    model = nn.Linear(4, 4)
    opt = build_adamw(model, lr=0.1, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    model(torch.ones(2, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert not torch.equal(before[0], model.weight)
    assert opt.state[model.weight]["step"].item() == 1
