"""Fixed-step ODE solvers for dx/dt = field(x, t), batched over the rows of x.

Fixed steps keep sampling cost predictable and the same for every evaluation, and a
learned flow-matching field is smooth enough that a few dozen steps suffice. Global
errors shrink as h (Euler), h^2 (midpoint) and h^4 (RK4) with the step size h.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _euler(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    return x + h * field(x, t)


def _midpoint(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    half = x + (h / 2) * field(x, t)
    return x + h * field(half, t + h / 2)


def _rk4(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    k1 = field(x, t)
    k2 = field(x + (h / 2) * k1, t + h / 2)
    k3 = field(x + (h / 2) * k2, t + h / 2)
    k4 = field(x + h * k3, t + h)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


STEPPERS = {"euler": _euler, "midpoint": _midpoint, "rk4": _rk4}


def integrate(
    field: Field, x: torch.Tensor, n_steps: int, method: str = "midpoint", t0: float = 0.0, t1: float = 1.0
) -> torch.Tensor:
    """x at ``t1`` after ``n_steps`` equal steps from ``x`` at ``t0``; ``field`` gets t as one value per row."""
    if method not in STEPPERS:
        raise ValueError(f"unknown ODE method {method!r}; allowed: {', '.join(STEPPERS)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    step = STEPPERS[method]
    h = (t1 - t0) / n_steps
    for k in range(n_steps):
        t = torch.full((x.shape[0],), t0 + k * h, dtype=x.dtype, device=x.device)
        x = step(field, x, t, h)
    return x


def sample(model: nn.Module, noise: torch.Tensor, n_steps: int, method: str = "midpoint") -> torch.Tensor:
    """Carry ``noise`` (x0 ~ N(0, I)) to data space along the model's velocity field."""
    return integrate(model, noise, n_steps, method)
