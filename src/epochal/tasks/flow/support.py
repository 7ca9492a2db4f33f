"""Does a sample lie where the data lives? Distance to each synthetic dataset's known shape.

The sliced (or even an exact) Wasserstein distance at a few thousand points hardly
moves when a few percent of the samples bridge two modes, though a plot shows
them at once. So each synthetic dataset gets a distance to the shape it is drawn
around (the two arcs of "moons", the eight centres of "8gaussians", the dark cells
of "checkerboard", the means of "gmm8d"), measured in the data's own units. The
region holding 99 % of real data is where that distance is at most its 99th
percentile over a large fresh draw; a sample outside it is off support. Real data
is then off support 1 % of the time by construction, and a model that bridges or
smears is off support more often.

The geometry here must match the generators in ``data.py``; the tests check that
fresh real data is off support about 1 % of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from epochal.tasks.flow.data import GMM_MEANS, SYNTHETIC

COVERAGE = 0.99  # share of real data inside the support region
# Rows drawn to place the 99th percentile: its standard error is then ~0.02 percentage points.
THRESHOLD_ROWS = 200_000


def _half_circle_distance(q: torch.Tensor, side: float) -> torch.Tensor:
    """Distance of points q (relative to the centre) to the unit half circle on the side side * y >= 0."""
    on_arc_side = side * q[..., 1] >= 0
    to_circle = (q.norm(dim=-1) - 1).abs()
    ends = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=q.dtype, device=q.device)
    to_ends = (q[..., None, :] - ends).norm(dim=-1).amin(dim=-1)
    return torch.where(on_arc_side, to_circle, to_ends)


def moons_distance(x: torch.Tensor) -> torch.Tensor:
    """The upper arc is the unit half circle at (0, 0) with y >= 0; the lower one, at (1, 0.5) with y <= 0.5."""
    lower_centre = torch.tensor([1.0, 0.5], dtype=x.dtype, device=x.device)
    return torch.minimum(_half_circle_distance(x, 1.0), _half_circle_distance(x - lower_centre, -1.0))


def _nearest_point_distance(x: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    centres = torch.as_tensor(points, dtype=x.dtype, device=x.device)
    return (x[..., None, :] - centres).norm(dim=-1).amin(dim=-1)


def eight_gaussians_distance(x: torch.Tensor) -> torch.Tensor:
    angles = np.arange(8) * (math.pi / 4)
    return _nearest_point_distance(x, 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1))


def checkerboard_distance(x: torch.Tensor) -> torch.Tensor:
    """Distance to the nearest dark cell; zero inside one."""
    corners = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=np.float64)
    low = torch.as_tensor(-4.0 + 2.0 * corners, dtype=x.dtype, device=x.device)
    outside = torch.clamp(low - x[..., None, :], min=0) + torch.clamp(x[..., None, :] - (low + 2.0), min=0)
    return outside.norm(dim=-1).amin(dim=-1)


def gmm8d_distance(x: torch.Tensor) -> torch.Tensor:
    return _nearest_point_distance(x, GMM_MEANS)


SHAPE_DISTANCE = {
    "moons": moons_distance,
    "8gaussians": eight_gaussians_distance,
    "checkerboard": checkerboard_distance,
    "gmm8d": gmm8d_distance,
}


@dataclass(frozen=True)
class Support:
    """The 99 % region of one synthetic dataset, in raw (un-normalised) units."""

    dataset: str
    threshold: float  # distance to the shape below which 99 % of real data lies

    def off_support(self, raw: torch.Tensor) -> torch.Tensor:
        """Share of the rows of ``raw`` (..., n, dim) outside the region: one share per leading index."""
        return (SHAPE_DISTANCE[self.dataset](raw.double()) > self.threshold).double().mean(dim=-1)


def fit_support(dataset: str, seed: int) -> Support:
    """Place the region's edge at the 99th percentile of a fresh draw (its own seed stream)."""
    if dataset not in SHAPE_DISTANCE:
        raise ValueError(f"no known shape for dataset {dataset!r}; known: {', '.join(SHAPE_DISTANCE)}")
    rows = SYNTHETIC[dataset](THRESHOLD_ROWS, np.random.default_rng([seed, 3]))
    distances = SHAPE_DISTANCE[dataset](torch.from_numpy(rows)).numpy()
    return Support(dataset, float(np.quantile(distances, COVERAGE)))
