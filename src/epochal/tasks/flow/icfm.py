"""Conditional flow matching: the probability path, its target velocity and the loss.

ICFM (seed 004): pair data x1 with independent noise x0 ~ N(0, I), move along the
straight line x_t = (1 - t) x0 + t x1, and regress the network on the line's
velocity x1 - x0 at a uniformly random t.

OT-CFM: the same path, but within each minibatch the noise is first re-paired with
the data by an exact optimal-transport assignment (squared Euclidean cost), which
straightens the learned flow so that fewer ODE steps are needed when sampling.
The trade-off: the assignment is solved on the CPU by scipy, so every training step
copies the batch's cost matrix to the host, which synchronises with the device.
ICFM stays entirely on the device.
"""

from __future__ import annotations

import torch
from torch import nn


FLOWS = ("icfm", "otcfm")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The point at time ``t`` (shape (n, 1)) on the straight path from ``x0`` to ``x1``."""
    return (1 - t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """d x_t / dt of the straight path: the same at every t."""
    return x1 - x0


def ot_pair(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """``x0`` reordered so that row j is the noise an optimal assignment gives to ``x1[j]``."""
    # Imported here: scipy.optimize takes a noticeable part of a second to import,
    # and only OT-CFM runs need it.
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.float(), x1.float()).square()
    _, col_of_row = linear_sum_assignment(cost.double().cpu().numpy())  # host sync, see above
    row_of_col = torch.argsort(torch.from_numpy(col_of_row)).to(x0.device)
    return x0[row_of_col]


def pair_noise(x0: torch.Tensor, x1: torch.Tensor, flow: str) -> torch.Tensor:
    if flow == "icfm":
        return x0
    if flow == "otcfm":
        return ot_pair(x0, x1)
    raise ValueError(f"unknown flow {flow!r}; allowed: {', '.join(FLOWS)}")


def squared_errors(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-element squared error of the predicted velocity at (x_t, t); x0 already paired with x1."""
    velocity = model(interpolate(x0, x1, t), t[:, 0])
    return (velocity - target_velocity(x0, x1)).square()
