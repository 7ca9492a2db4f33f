"""AdamW against torch.optim.AdamW, step for step, in float64."""

import numpy as np
import pytest
import torch

from epochal.optim import make_schedule
from epochal.scratch import AdamW, LRScheduler, ScratchValueError

SHAPES = [(7, 5), (5,), (3, 4, 2), ()]


def _params(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def _torch_adamw(params, **kw):
    tensors = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    # The default path on CPU (foreach=None -> single-tensor); named to make the intent explicit.
    opt = torch.optim.AdamW(tensors, foreach=False, fused=False, **kw)
    return tensors, opt


def _max_diff(np_params, tensors):
    return max(float(np.max(np.abs(p - t.detach().numpy()))) for p, t in zip(np_params, tensors))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.1])
def test_matches_torch_on_a_fixed_gradient_sequence(weight_decay):
    params = _params(0)
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    tensors, torch_opt = _torch_adamw(params, **kw)
    opt = AdamW(params, **kw)
    rng = np.random.default_rng(1)
    worst = 0.0
    for step in range(1000):
        # Gradients over many scales, some exactly zero, so eps and the bias corrections matter.
        grads = [np.asarray(rng.standard_normal(p.shape) * 10.0 ** rng.integers(-6, 3)) for p in params]
        if step % 7 == 0:
            grads[1][...] = 0.0
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        torch_opt.step()
        opt.step(grads)
        worst = max(worst, _max_diff(params, tensors))
    assert worst <= 1e-9, worst
    assert opt.t == 1000


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_matches_torch_on_a_quadratic(weight_decay):
    """Minimize 0.5 x'Ax - b'x; both sides get the same gradient, A x - b at torch's x.

    (Each side computing its own gradient would not do: near the minimum the
    gradient is rounding noise, which Adam normalizes into steps of size ~lr.)
    """
    rng = np.random.default_rng(2)
    n = 12
    a = rng.standard_normal((n, n))
    a = a @ a.T / n + np.eye(n)  # positive definite
    b = rng.standard_normal(n)
    params = [rng.standard_normal(n)]
    kw = dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    (x,), torch_opt = _torch_adamw(params, **kw)
    opt = AdamW(params, **kw)
    worst = 0.0
    for _ in range(1000):
        grad = a @ x.detach().numpy() - b
        x.grad = torch.tensor(grad)
        torch_opt.step()
        opt.step([grad])
        worst = max(worst, _max_diff(params, [x]))
    assert worst <= 1e-9, worst
    if weight_decay == 0:  # it did optimize: within a few lr of the minimum A^-1 b (Adam jitters there)
        np.testing.assert_allclose(params[0], np.linalg.solve(a, b), atol=0.05)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_matches_torch_with_the_schedule(schedule):
    """AdamW + LRScheduler against torch AdamW + LambdaLR(epochal.optim schedule)."""
    params = _params(3)
    kw = dict(lr=5e-3, weight_decay=0.01)
    tensors, torch_opt = _torch_adamw(params, **kw)
    torch_sched = torch.optim.lr_scheduler.LambdaLR(torch_opt, make_schedule(schedule, 100, 1000, 0.1))
    opt = AdamW(params, **kw)
    sched = LRScheduler(opt, warmup_steps=100, total_steps=1000, min_lr=5e-4, schedule=schedule)
    rng = np.random.default_rng(4)
    for _ in range(1000):
        grads = [rng.standard_normal(p.shape) for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        torch_opt.step()
        torch_sched.step()
        opt.step(grads)
        sched.step()
        assert opt.lr == torch_opt.param_groups[0]["lr"]
    assert _max_diff(params, tensors) <= 1e-9


def test_updates_the_given_arrays_in_place():
    params = _params(5)
    ids = [id(p) for p in params]
    before = [p.copy() for p in params]
    opt = AdamW(params)
    opt.zero_grad()  # a no-op, kept for torch-shaped loops
    opt.step([np.ones_like(p) for p in params])
    assert [id(p) for p in opt.params] == ids
    assert all(not np.array_equal(p, q) for p, q in zip(params, before))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(6)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(40)]
    a_params = _params(7)
    a = AdamW(a_params, lr=1e-2, weight_decay=0.1)
    for g in grads[:20]:
        a.step(g)
    state = a.state_dict()
    b_params = [p.copy() for p in a_params]
    b = AdamW(b_params, lr=123.0, betas=(0.5, 0.5), eps=1.0, weight_decay=0.0)
    b.load_state_dict(state)
    for g in grads[20:]:
        a.step(g)
        b.step(g)
    for p, q in zip(a_params, b_params):
        np.testing.assert_array_equal(p, q)
    assert b.t == 40 and b.lr == 1e-2 and b.weight_decay == 0.1


def test_state_dict_is_a_copy():
    params = _params(8)
    opt = AdamW(params)
    opt.step([np.ones_like(p) for p in params])
    state = opt.state_dict()
    saved = [m.copy() for m in state["exp_avg"]]
    opt.step([np.ones_like(p) for p in params])
    for m, s in zip(state["exp_avg"], saved):
        np.testing.assert_array_equal(m, s)


def test_load_state_dict_rejects_a_mismatch():
    opt = AdamW(_params(9))
    state = opt.state_dict()
    state["exp_avg"] = state["exp_avg"][:-1]
    with pytest.raises(ValueError, match="exp_avg arrays for 4 parameters"):
        opt.load_state_dict(state)
    state = opt.state_dict()
    state["exp_avg_sq"][0] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"exp_avg_sq\[0\] has shape \(2, 2\)"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"step": 1})


def test_a_bad_step_changes_nothing():
    params = _params(10)
    before = [p.copy() for p in params]
    opt = AdamW(params)
    grads = [np.ones_like(p) for p in params]
    grads[-1] = np.array(np.nan)
    with pytest.raises(ValueError):
        opt.step(grads)
    assert opt.t == 0
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize(
    "make_grads, message",
    [
        (lambda ps: [np.ones_like(p) for p in ps[:-1]], "got 3 gradients for 4 parameters"),
        (lambda ps: [np.ones_like(p) for p in ps] + [np.ones(1)], "got 5 gradients for 4 parameters"),
        (lambda ps: [np.ones((5, 7))] + [np.ones_like(p) for p in ps[1:]],
         r"gradient 0 has shape \(5, 7\); it must have its parameter's shape \(7, 5\)"),
        (lambda ps: [np.ones_like(p) for p in ps[:1]] + [np.full(5, np.nan)] + [np.ones_like(p) for p in ps[2:]],
         r"gradient 1 \(shape \(5,\)\) has 5 non-finite values"),
        (lambda ps: [np.ones_like(p) for p in ps[:-1]] + [np.array(np.inf)], "non-finite"),
        (lambda ps: [p.tolist() for p in ps], "gradient 0 is a list; a numpy array is required"),
        (lambda ps: [np.ones_like(p) for p in ps[:-1]] + [np.float64(1.0)], "gradient 3 is a float64 .a numpy scalar"),
        (lambda ps: np.ones(3), "must be a list of arrays"),
        (lambda ps: [np.ones(p.shape, dtype=int) for p in ps], "gradient 0 has dtype int64; gradients must be floating"),
    ],
)
def test_bad_gradients_raise_value_error(make_grads, message):
    params = _params(11)
    opt = AdamW(params)
    with pytest.raises(ScratchValueError, match=message):
        opt.step(make_grads(params))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lr must be >= 0"),
        (dict(lr=float("nan")), "lr must be >= 0"),
        (dict(eps=-1e-8), "eps must be >= 0"),
        (dict(betas=(0.9, 1.0)), r"betas must be two numbers in \[0, 1\)"),
        (dict(betas=(0.9,)), "betas must be two numbers"),
        (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW(_params(12), **kwargs)


def test_bad_params_raise_value_error():
    with pytest.raises(ValueError, match="params is empty"):
        AdamW([])
    with pytest.raises(ValueError, match="parameter 0 is int64; parameters must be floating-point"):
        AdamW([np.arange(3)])
    with pytest.raises(ValueError, match="parameter 0 is list"):
        AdamW([[1.0, 2.0]])
