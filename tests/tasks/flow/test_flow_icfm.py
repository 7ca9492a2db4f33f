"""Probability paths, target velocities, the loss and the exact OT pairing."""

import itertools

import pytest
import torch
from torch import nn

from epochal.tasks.flow.icfm import interpolate, ot_pair, pair_noise, squared_errors, target_velocity


def test_interpolation_and_target_on_fixed_tensors():
    x0 = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    x1 = torch.tensor([[4.0, 2.0], [3.0, 3.0]])
    t = torch.tensor([[0.25], [0.5]])
    expected = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    assert torch.equal(interpolate(x0, x1, t), expected)
    assert torch.equal(interpolate(x0, x1, torch.zeros(2, 1)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(2, 1)), x1)
    assert torch.equal(target_velocity(x0, x1), torch.tensor([[4.0, 0.0], [2.0, 4.0]]))


def test_target_is_the_time_derivative_of_the_path():
    x0, x1 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, 1, dtype=torch.float64)
    h = 1e-6
    numeric = (interpolate(x0, x1, t + h) - interpolate(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(numeric, target_velocity(x0, x1))


class ConstantVelocity(nn.Module):
    """Predicts the same velocity everywhere; records the times it was called with."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity

    def forward(self, x, t):
        self.times = t
        return self.velocity.expand_as(x)


def test_squared_errors_compare_with_the_target():
    x0 = torch.zeros(2, 2)
    x1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    model = ConstantVelocity(torch.tensor([1.0, 1.0]))
    errors = squared_errors(model, x0, x1, torch.tensor([[0.1], [0.9]]))
    assert torch.equal(errors, torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    assert model.times.shape == (2,)


def test_a_zero_field_scores_the_noise_variance_at_zero_data():
    # With x1 = 0 the target velocity is -x0, so a zero field's mean squared error is E|x0|^2 / dim = 1.
    torch.manual_seed(1)
    x1 = torch.zeros(20000, 2)
    x0 = pair_noise(torch.randn_like(x1), x1, "icfm")
    loss = squared_errors(ConstantVelocity(torch.zeros(2)), x0, x1, torch.rand(20000, 1)).mean()
    assert abs(float(loss) - 1.0) < 0.03


def test_ot_pairing_is_optimal_against_brute_force():
    # Exhaustive search over all pairings of tiny batches; ties (equal costs) included.
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = 1 + trial % 6
        x0 = torch.randn(n, 2, generator=generator)
        x1 = torch.randn(n, 2, generator=generator)
        if trial % 4 == 3:
            x0, x1 = x0.round(), x1.round()  # integer grid points: many equal costs
        paired = ot_pair(x0, x1)
        assert torch.equal(torch.sort(paired, dim=0).values, torch.sort(x0, dim=0).values)  # a permutation of x0
        best = min(float((x0[list(p)] - x1).square().sum()) for p in itertools.permutations(range(n)))
        assert float((paired - x1).square().sum()) == pytest.approx(best, abs=1e-5)


def test_ot_pairing_undoes_a_permutation():
    x1 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    shuffled = x1[torch.tensor([2, 0, 3, 1])] + 0.1
    assert torch.equal(ot_pair(shuffled, x1), x1 + 0.1)


def test_ot_pairing_is_a_permutation_that_does_not_cost_more():
    torch.manual_seed(0)
    x0, x1 = torch.randn(64, 2), torch.randn(64, 2) + 1.0
    paired = pair_noise(x0, x1, "otcfm")
    assert torch.equal(torch.sort(paired, dim=0).values, torch.sort(x0, dim=0).values)
    assert (paired - x1).square().sum() < (x0 - x1).square().sum()
    assert pair_noise(x0, x1, "icfm") is x0
    with pytest.raises(ValueError, match="allowed: icfm, otcfm"):
        pair_noise(x0, x1, "rectified")
