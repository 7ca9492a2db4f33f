"""Seed 002's "Example Usage" runs as written: a model with only parameters() and forward() trains."""

import re

import numpy as np
import pytest

from epochal.scratch import MLP, AdamW, ScratchValueError, Trainer, finite_difference_gradients, softmax_cross_entropy

# Verbatim from seed 002 ("## Example Usage"), with the import the issue names in front.
SEED_002_EXAMPLE = '''
from epochal.scratch import AdamW, LRScheduler, Trainer

import numpy as np

# Dummy model
class SimpleModel:
    def __init__(self, input_dim, hidden_dim, output_dim):
        self.W1 = np.random.randn(input_dim, hidden_dim) * 0.01
        self.W2 = np.random.randn(hidden_dim, output_dim) * 0.01

    def parameters(self):
        return [self.W1, self.W2]

    def forward(self, x):
        h = np.tanh(x @ self.W1)
        return h @ self.W2

# Setup
model = SimpleModel(100, 64, 50)
optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
scheduler = LRScheduler(optimizer, warmup_steps=100, total_steps=1000)
trainer = Trainer(model, optimizer, scheduler)

# Training loop
for epoch in range(10):
    for batch in dataloader:
        metrics = trainer.train_step(batch)
        print(f"Loss: {metrics['loss']:.4f}, LR: {metrics['lr']:.6f}")
'''

LINE = re.compile(r"^Loss: (\d+\.\d{4}), LR: (\d+\.\d{6})$")


def test_the_seed_example_runs_verbatim_and_its_loss_falls(capsys):
    # The seed leaves `dataloader` to the reader: one fixed batch of 4 examples, labels of its 50 classes.
    # One batch, because every step differences the 9,600 weights (~0.4 s a step).
    rng = np.random.default_rng(0)
    dataloader = [{"input_ids": rng.standard_normal((4, 100)), "labels": rng.integers(0, 50, 4)}]
    np.random.seed(0)  # the example draws its weights from the global generator
    namespace = {"dataloader": dataloader}
    exec(compile(SEED_002_EXAMPLE, "seed_002_example", "exec"), namespace)

    assert namespace["trainer"].gradient_method == "finite differences"
    lines = capsys.readouterr().out.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert len(lines) == 10 and all(parsed), lines
    losses = np.array([float(m.group(1)) for m in parsed])
    lrs = [float(m.group(2)) for m in parsed]
    assert lrs == pytest.approx([step * 1e-3 / 100 for step in range(10)], abs=1e-6)  # warmup over 100 steps
    # The first update uses lr 0, so the loss falls from the second step on, at every step.
    assert losses[1] == losses[0] and np.all(np.diff(losses[1:]) < 0), losses
    assert losses[-1] < losses[0] - 0.005, losses


def _mlp_case(activation):
    rng = np.random.default_rng(3)
    model = MLP([5, 7, 6, 4], activation=activation, seed=1)
    inputs, labels = rng.standard_normal((9, 5)), rng.integers(0, 4, 9)
    _, d_logits = softmax_cross_entropy(model.forward(inputs), labels)
    return model, inputs, d_logits


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_finite_differences_match_the_mlps_analytic_gradient(activation):
    model, inputs, d_logits = _mlp_case(activation)
    before = [p.copy() for p in model.parameters()]
    numeric = finite_difference_gradients(model, inputs, d_logits)
    model.forward(inputs)  # backward needs the activations of this batch again
    analytic = model.backward(d_logits)
    for i, (fd, exact) in enumerate(zip(numeric, analytic)):
        assert fd.shape == exact.shape
        relative = np.linalg.norm(fd - exact) / np.linalg.norm(exact)
        assert relative <= 1e-6, (i, relative)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)  # every perturbed element is restored bit for bit


class _ForwardOnly:
    """The MLP seen through seed 002's protocol: parameters() and forward(), no backward."""

    def __init__(self, mlp):
        self.mlp = mlp

    def parameters(self):
        return self.mlp.parameters()

    def forward(self, x):
        return self.mlp.forward(x)


def test_a_model_without_backward_trains_like_the_same_model_with_it():
    rng = np.random.default_rng(4)
    batches = [{"inputs": rng.standard_normal((8, 3)), "labels": rng.integers(0, 3, 8)} for _ in range(3)]
    with_backward, forward_only = MLP([3, 5, 3], seed=2), _ForwardOnly(MLP([3, 5, 3], seed=2))
    trainers = [Trainer(m, AdamW(m.parameters(), lr=1e-2), None) for m in (with_backward, forward_only)]
    assert [t.gradient_method for t in trainers] == ["backward", "finite differences"]
    for batch in batches:
        norms = [t.train_step(batch)["grad_norm"] for t in trainers]
        assert norms[1] == pytest.approx(norms[0], rel=1e-7)
    for a, b in zip(with_backward.parameters(), forward_only.parameters()):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-9)


def test_parameters_that_are_copies_are_refused():
    class Copies(_ForwardOnly):
        def parameters(self):
            return [p.copy() for p in self.mlp.parameters()]

    model = Copies(MLP([3, 3], seed=0))
    with pytest.raises(ScratchValueError, match=r"not the model's parameters\(\)"):
        Trainer(model, AdamW(model.parameters()), None)
