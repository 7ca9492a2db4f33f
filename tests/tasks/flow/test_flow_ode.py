"""Fixed-step solvers: exactness where they should be exact, and their order of accuracy."""

import math

import pytest
import torch

from epochal.tasks.flow.ode import integrate


def decay(x, t):
    return -x


def test_each_solver_integrates_exponential_decay():
    x0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    exact = x0 * math.exp(-1.0)
    for method, tolerance in (("euler", 1e-2), ("midpoint", 1e-4), ("rk4", 1e-9)):
        x1 = integrate(decay, x0, 100, method)
        assert (x1 - exact).abs().max() < tolerance, method


@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_order_of_accuracy(method, order):
    x0 = torch.ones(1, 1, dtype=torch.float64)
    errors = [float((integrate(decay, x0, n, method) - math.exp(-1.0)).abs()) for n in (10, 20)]
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.15


def test_a_time_dependent_field_is_integrated_exactly_by_rk4():
    # dx/dt = 3 t^2 (per row scale): x(1) = x(0) + scale; RK4 is exact for cubics in t.
    scale = torch.tensor([[1.0], [2.0], [-0.5]], dtype=torch.float64)

    def field(x, t):
        assert t.shape == (3,)
        return 3 * t[:, None] ** 2 * scale

    x1 = integrate(field, torch.zeros(3, 1, dtype=torch.float64), 3, "rk4")
    torch.testing.assert_close(x1, scale)


def test_linear_field_from_noise_to_a_point_is_exact_with_one_euler_step():
    # The ideal CFM field towards a single point c carries x0 straight to c.
    c = torch.tensor([2.0, -1.0], dtype=torch.float64)
    x0 = torch.randn(8, 2, dtype=torch.float64)
    x1 = integrate(lambda x, t: (c - x) / (1 - t[:, None]), x0, 1, "euler")
    torch.testing.assert_close(x1, c.expand(8, 2))


def test_bad_arguments():
    x0 = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="allowed: euler, midpoint, rk4"):
        integrate(decay, x0, 4, "heun")
    with pytest.raises(ValueError, match="n_steps"):
        integrate(decay, x0, 0)
