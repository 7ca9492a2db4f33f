"""The MLP's hand-written backward pass and the softmax cross-entropy."""

import numpy as np
import pytest
import torch

from epochal.scratch import MLP, ScratchValueError, softmax_cross_entropy


def _loss(model, x, y):
    return softmax_cross_entropy(model.forward(x), y)[0]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradients_match_central_differences(activation):
    rng = np.random.default_rng(0)
    model = MLP([5, 8, 6, 4], activation=activation, seed=1)
    for b in model.biases:  # nonzero biases, so their gradients are checked too
        b[...] = 0.1 * rng.standard_normal(b.shape)
    x = rng.standard_normal((11, 5))
    y = rng.integers(0, 4, 11)
    loss, d_logits = softmax_cross_entropy(model.forward(x), y)
    grads = model.backward(d_logits)
    assert [g.shape for g in grads] == [p.shape for p in model.parameters()]
    h = 1e-6
    for param, grad in zip(model.parameters(), grads):
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            saved = param[idx]
            param[idx] = saved + h
            plus = _loss(model, x, y)
            param[idx] = saved - h
            minus = _loss(model, x, y)
            param[idx] = saved
            numeric[idx] = (plus - minus) / (2 * h)
        rel = np.linalg.norm(grad - numeric) / max(np.linalg.norm(grad) + np.linalg.norm(numeric), 1e-12)
        assert rel < 1e-6, (param.shape, rel)


def test_cross_entropy_matches_torch_and_is_stable_for_huge_logits():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 5)) * 3
    logits[0] = [1e4, -1e4, 0, 5e3, 1e4]  # exp(1e4) would overflow without the max shift
    logits[1] = -1e4
    labels = np.array([1, 2, 0, 4, 3, 3])
    loss, grad = softmax_cross_entropy(logits, labels)
    t = torch.tensor(logits, requires_grad=True)
    torch_loss = torch.nn.functional.cross_entropy(t, torch.tensor(labels))
    torch_loss.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 3]), r"class indices in \[0, 2\]"),
        (np.array([-1, 0]), r"class indices in \[0, 2\]"),
        (np.array([0.0, 1.0]), "must be 2 integers"),
        (np.array([0, 1, 2]), "must be 2 integers"),
    ],
)
def test_bad_labels_raise_value_error(labels, message):
    with pytest.raises(ScratchValueError, match=message):
        softmax_cross_entropy(np.zeros((2, 3)), labels)


def test_forward_checks_the_input_width_and_backward_needs_forward():
    model = MLP([3, 4, 2])
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, 3\), got \(5, 4\)"):
        model.forward(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="needs a forward"):
        model.backward(np.zeros((5, 2)))


def test_bad_construction_raises_value_error():
    with pytest.raises(ValueError, match="unknown activation 'gelu'; allowed: relu, tanh"):
        MLP([2, 2], activation="gelu")
    with pytest.raises(ValueError, match="at least an input and an output"):
        MLP([2])


def test_same_seed_same_weights_and_parameters_are_not_copies():
    a, b = MLP([4, 8, 3], seed=5), MLP([4, 8, 3], seed=5)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)
    a.parameters()[0][0, 0] = 42.0
    assert a.weights[0][0, 0] == 42.0


def test_predict_does_not_disturb_a_pending_backward():
    rng = np.random.default_rng(3)
    model = MLP([3, 5, 2], seed=0)
    x, y = rng.standard_normal((4, 3)), np.array([0, 1, 1, 0])
    _, d = softmax_cross_entropy(model.forward(x), y)
    expected = MLP([3, 5, 2], seed=0)
    expected.forward(x)
    model.predict(rng.standard_normal((7, 3)))
    for g, e in zip(model.backward(d), expected.backward(d)):
        np.testing.assert_array_equal(g, e)
