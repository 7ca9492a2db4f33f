import copy

import pytest

import torch
import torch.nn.functional as F
from torch import nn

from epochal.optim import build_adamw
from epochal.step import Step


def mse(model, batch):
    return {"loss": F.mse_loss(model(batch["x"]), batch["y"])}


def make_step(model, grad_clip=1.0, grad_accum=1, loss_fn=mse):
    opt = build_adamw(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Step(model, loss_fn, opt, sched, torch.device("cpu"), "fp32", grad_clip, grad_accum)


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 8, generator=g), "y": torch.randn(n, 3, generator=g) * 10}


def test_recorded_grad_norm_is_the_norm_before_clipping():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    reference = copy.deepcopy(model)
    out = make_step(model, grad_clip=0.5)(batch())
    mse(reference, batch())["loss"].backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert expected > 0.5  # the test needs a gradient that actually gets clipped
    assert torch.allclose(out["grad_norm"], expected)


def test_clipping_limits_the_update_like_clip_grad_norm():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    reference = copy.deepcopy(model)
    make_step(model, grad_clip=0.5)(batch())
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0, fused=True)
    mse(reference, batch())["loss"].backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_two_micro_batches_of_32_match_one_batch_of_64():
    torch.manual_seed(0)
    whole, split = nn.Linear(8, 3), None
    split = copy.deepcopy(whole)
    step_whole, step_split = make_step(whole), make_step(split, grad_accum=2)
    for seed in range(5):
        a, b = step_whole(batch(seed=seed)), step_split(batch(seed=seed))
        assert torch.allclose(a["loss"], b["loss"], rtol=1e-6)
    for p, q in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_uneven_micro_batches_weight_by_size():
    torch.manual_seed(0)
    whole = nn.Linear(8, 3)
    split = copy.deepcopy(whole)
    a = make_step(whole)(batch(n=50))
    b = make_step(split, grad_accum=3)(batch(n=50))  # 17 + 17 + 16
    assert torch.allclose(a["loss"], b["loss"], rtol=1e-6)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(whole.parameters(), split.parameters()))


def poisoned_loss(model, batch):
    return {"loss": mse(model, batch)["loss"] * float("nan")}


def infinite_gradient(model, batch):
    """A finite loss whose gradient is infinite: d sqrt(u)/du at u = 0."""
    out = model(batch["x"])
    return {"loss": F.mse_loss(out, batch["y"]) + torch.sqrt(out[0, 0] - out[0, 0].detach())}


@pytest.mark.parametrize("loss_fn", [poisoned_loss, infinite_gradient], ids=["nan-loss", "inf-grad"])
def test_non_finite_loss_or_gradient_skips_the_update(loss_fn):
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    before = [p.detach().clone() for p in model.parameters()]
    out = make_step(model, loss_fn=loss_fn)(batch())
    assert not torch.isfinite(out["loss"] + out["grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_components_are_returned_next_to_the_loss():
    def two_part(model, batch):
        a = F.mse_loss(model(batch["x"]), batch["y"])
        return {"loss": a * 3, "part": a}

    out = make_step(nn.Linear(8, 3), loss_fn=two_part)(batch())
    assert torch.allclose(out["loss"], out["part"] * 3)


def test_without_the_guard_a_non_finite_step_reaches_the_weights():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    opt = build_adamw(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = Step(model, poisoned_loss, opt, sched, torch.device("cpu"), "fp32", 1.0, 1, guard_nonfinite=False)
    step(batch())
    assert not torch.isfinite(model.weight).all()
