"""Trainer: clipping like torch, the step's metrics, epochs, the batch and model protocol."""

import numpy as np
import pytest
import torch
from torch import nn

from epochal.optim import make_schedule
from epochal.scratch import MLP, AdamW, LRScheduler, ScratchValueError, Trainer, clip_grad_norm

SHAPES = [(6, 4), (4,), (2, 3, 5), ()]


@pytest.mark.parametrize("scale", [1e-3, 0.3, 1.0, 50.0])
@pytest.mark.parametrize("max_norm", [0.5, 1.0, 10.0])
def test_clipping_equals_torch_clip_grad_norm(scale, max_norm):
    rng = np.random.default_rng(0)
    grads = [np.asarray(rng.standard_normal(s) * scale) for s in SHAPES]
    tensors = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g)
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(torch_norm.item(), rel=1e-13)
    for g, t in zip(grads, tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-13, atol=0)


def test_clipping_reports_the_pre_clip_norm_and_none_only_measures():
    grads = [np.array([3.0, 4.0])]
    assert clip_grad_norm(grads, 1.0) == 5.0
    assert np.linalg.norm(grads[0]) == pytest.approx(1.0, abs=1e-6)
    grads = [np.array([3.0, 4.0])]
    assert clip_grad_norm(grads, None) == 5.0
    np.testing.assert_array_equal(grads[0], [3.0, 4.0])


def _batch(rng, n=16, d=4, k=3, key="inputs"):
    return {key: rng.standard_normal((n, d)), "labels": rng.integers(0, k, n)}


def _trainer(max_grad_norm=1.0, **sched):
    model = MLP([4, 8, 3], seed=0)
    opt = AdamW(model.parameters(), lr=1e-2)
    scheduler = LRScheduler(opt, **(sched or dict(warmup_steps=2, total_steps=10)))
    return Trainer(model, opt, scheduler, max_grad_norm=max_grad_norm)


def test_train_step_metrics():
    rng = np.random.default_rng(1)
    trainer = _trainer(max_grad_norm=1e-3)
    lrs = []
    for _ in range(4):
        metrics = trainer.train_step(_batch(rng))
        assert set(metrics) == {"loss", "grad_norm", "lr"}
        assert metrics["grad_norm"] > 1e-3  # reported before clipping
        lrs.append(metrics["lr"])
    assert lrs == pytest.approx([0.0, 5e-3, 1e-2, 1e-2 * make_schedule("cosine", 2, 10, 0.0)(3)])
    assert trainer.global_step == 4


def test_input_ids_is_accepted_like_inputs():
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    a, b = _trainer(), _trainer()
    ma = a.train_step(batch)
    mb = b.train_step({"input_ids": batch["inputs"], "labels": batch["labels"]})
    assert ma == mb


def test_train_epoch_averages():
    rng = np.random.default_rng(3)
    batches = [_batch(rng, n) for n in (16, 16, 4)]
    trainer = _trainer()
    seen = []
    result = trainer.train_epoch(batches, on_step=lambda step, m: seen.append((step, m)))
    assert [s for s, _ in seen] == [1, 2, 3]
    losses = [m["loss"] for _, m in seen]
    assert result["loss"] == pytest.approx((16 * losses[0] + 16 * losses[1] + 4 * losses[2]) / 36)
    assert result["grad_norm"] == pytest.approx(np.mean([m["grad_norm"] for _, m in seen]))
    assert result["lr"] == seen[-1][1]["lr"] and result["steps"] == 3


def test_the_whole_step_matches_torch():
    """NumPy MLP + Trainer against the same MLP in torch with clip_grad_norm_, AdamW and LambdaLR."""
    rng = np.random.default_rng(4)
    model = MLP([5, 16, 16, 3], seed=7)
    torch_model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    torch_model.double()
    with torch.no_grad():
        for layer, w, b in zip(torch_model[::2], model.weights, model.biases):
            layer.weight.copy_(torch.tensor(w.T))
            layer.bias.copy_(torch.tensor(b))
    opt = AdamW(model.parameters(), lr=3e-2, weight_decay=0.01)
    trainer = Trainer(model, opt, LRScheduler(opt, 10, 60, min_lr=3e-3), max_grad_norm=0.5)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=3e-2, weight_decay=0.01)
    torch_sched = torch.optim.lr_scheduler.LambdaLR(torch_opt, make_schedule("cosine", 10, 60, 0.1))
    for _ in range(60):
        batch = _batch(rng, 32, 5, 3)
        metrics = trainer.train_step(batch)
        torch_opt.zero_grad()
        loss = nn.functional.cross_entropy(torch_model(torch.tensor(batch["inputs"])), torch.tensor(batch["labels"]))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 0.5)
        torch_opt.step()
        torch_sched.step()
        assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-10)
        assert metrics["grad_norm"] == pytest.approx(norm.item(), rel=1e-10)
    for layer, w, b in zip(torch_model[::2], model.weights, model.biases):
        np.testing.assert_allclose(w, layer.weight.detach().numpy().T, atol=1e-9, rtol=0)
        np.testing.assert_allclose(b, layer.bias.detach().numpy(), atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"x": np.zeros((2, 4)), "labels": np.zeros(2, int)}, r"exactly one of \('inputs', 'input_ids'\)"),
        ({"inputs": np.zeros((2, 4))}, "must have 'labels'"),
        ({"inputs": np.zeros((2, 4)), "input_ids": np.zeros((2, 4)), "labels": np.zeros(2, int)},
         "exactly one of"),
        ([np.zeros((2, 4)), np.zeros(2, int)], "a batch must be a dict"),
    ],
)
def test_bad_batches_raise_value_error(batch, message):
    with pytest.raises(ScratchValueError, match=message):
        _trainer().train_step(batch)


class _BadModel:
    """A model whose backward returns whatever the test wants."""

    def __init__(self, grads_of):
        self.w = np.zeros((4, 3))
        self.grads_of = grads_of

    def parameters(self):
        return [self.w]

    def forward(self, inputs):
        return inputs @ self.w

    def backward(self, d_outputs):
        return self.grads_of(self.w)


@pytest.mark.parametrize(
    "grads_of, message",
    [
        (lambda w: [np.ones_like(w), np.ones(3)], "got 2 gradients for 1 parameters"),
        (lambda w: [np.ones((3, 4))], r"gradient 0 has shape \(3, 4\); it must have its parameter's shape \(4, 3\)"),
        (lambda w: [np.full_like(w, np.nan)], r"gradient 0 \(shape \(4, 3\)\) has 12 non-finite values"),
    ],
)
def test_bad_model_gradients_raise_value_error(grads_of, message):
    model = _BadModel(grads_of)
    opt = AdamW(model.parameters())
    trainer = Trainer(model, opt, None)
    with pytest.raises(ScratchValueError, match=message):
        trainer.train_step(_batch(np.random.default_rng(5)))
    np.testing.assert_array_equal(model.w, 0.0)
    assert trainer.global_step == 0


def test_non_finite_loss_and_bad_settings_raise_value_error():
    model = MLP([4, 3])
    model.weights[0][0, 0] = np.nan
    opt = AdamW(model.parameters())
    with pytest.raises(ScratchValueError, match="the loss is nan at step 1"):
        Trainer(model, opt, None).train_step(_batch(np.random.default_rng(6)))
    with pytest.raises(ScratchValueError, match="max_grad_norm must be > 0"):
        Trainer(model, opt, None, max_grad_norm=0.0)
    other = AdamW(MLP([4, 3]).parameters())
    with pytest.raises(ScratchValueError, match="different optimizer"):
        Trainer(model, opt, LRScheduler(other, 0, 10))
    with pytest.raises(ScratchValueError, match="no batches"):
        Trainer(MLP([4, 3]), AdamW(MLP([4, 3]).parameters()), None).train_epoch([])
