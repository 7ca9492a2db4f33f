"""Sliced Wasserstein distance: zero, symmetry, growth with a shift, batching."""

import pytest
import torch

from epochal.tasks.flow.metrics import random_directions, sliced_wasserstein


@pytest.fixture
def directions():
    return random_directions(2, 128, torch.Generator().manual_seed(0))


def test_directions_are_unit_vectors(directions):
    assert directions.shape == (2, 128)
    torch.testing.assert_close(directions.norm(dim=0), torch.ones(128))


def test_zero_for_identical_sets_in_any_order(directions):
    a = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    assert float(sliced_wasserstein(a, a, directions)) == 0.0
    assert float(sliced_wasserstein(a, a[torch.randperm(300)], directions)) == 0.0


def test_symmetric_and_grows_with_a_shift(directions):
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(500, 2, generator=generator), torch.randn(500, 2, generator=generator)
    assert torch.equal(sliced_wasserstein(a, b, directions), sliced_wasserstein(b, a, directions))
    distances = [float(sliced_wasserstein(a, b + torch.tensor([s, 0.0]), directions)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[-1] > 5 * distances[0]


def test_a_pure_shift_has_the_expected_distance():
    # Shifting by v moves every projection by <v, d>: SW2^2 = mean_d <v, d>^2 = |v|^2 / dim.
    many = random_directions(2, 20000, torch.Generator().manual_seed(3))
    a = torch.randn(100, 2)
    shift = torch.tensor([3.0, 4.0])
    assert float(sliced_wasserstein(a, a + shift, many)) == pytest.approx(5.0 / 2**0.5, rel=0.02)


def test_batched_draws_match_one_by_one(directions):
    draws = torch.randn(3, 50, 2)
    reference = torch.randn(50, 2)
    batched = sliced_wasserstein(draws, reference, directions)
    assert batched.shape == (3,)
    for k in range(3):
        torch.testing.assert_close(batched[k], sliced_wasserstein(draws[k], reference, directions))


def test_shape_errors(directions):
    with pytest.raises(ValueError, match="one n and dim"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(6, 2), directions)
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(torch.zeros(5, 3), torch.zeros(5, 3), directions)
