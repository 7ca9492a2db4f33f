"""Sample quality: the sliced Wasserstein-2 distance between two equal-size point sets.

Both sets are projected on random unit directions; in 1-D the optimal coupling of
two equal-size samples matches sorted values, so W2^2 of a slice is the mean squared
difference of the sorted projections. SW2 is the root of the mean over directions.

A finite sample never has distance zero from its own distribution, so a score is
read next to its floor, the distance real data of the same size has, averaged over
many draws: see ``quality.py``.
"""

from __future__ import annotations

import numpy as np
import torch


def random_directions(dim: int, n_directions: int, generator: torch.Generator) -> torch.Tensor:
    """(dim, n_directions) unit vectors, uniform on the sphere, drawn on the generator's device."""
    directions = torch.randn(dim, n_directions, generator=generator, device=generator.device)
    return directions / directions.norm(dim=0, keepdim=True)


def sorted_projections(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Projections of the rows of ``points`` (..., n, dim) on ``directions`` (dim, k), sorted over n."""
    projections = points.float() @ directions
    if projections.device.type == "cpu":
        # torch's CPU sort also computes the permutation and is 5-8x slower than
        # NumPy's values-only sort here; on a GPU torch's sort is the fast one.
        return torch.from_numpy(np.sort(projections.detach().numpy(), axis=-2))
    return torch.sort(projections, dim=-2).values


def sliced_wasserstein_sorted(a: torch.Tensor, b_sorted: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """SW2 between the rows of ``a`` (..., n, dim) and a set whose sorted projections are ``b_sorted`` (..., n, k).

    A set compared again and again (the reference of every evaluation) is sorted once.
    """
    if a.ndim < 2 or a.shape[-2] != b_sorted.shape[-2]:
        raise ValueError(f"sliced_wasserstein needs (..., n, dim) sets of one n, got {tuple(a.shape)} and n = {b_sorted.shape[-2]}")
    if directions.shape[0] != a.shape[-1]:
        raise ValueError(f"directions have dimension {directions.shape[0]}, points {a.shape[-1]}")
    return (sorted_projections(a, directions) - b_sorted).square().mean(dim=(-2, -1)).sqrt()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """SW2 between the rows of ``a`` and ``b`` (each (..., n, dim)) along ``directions`` (dim, k).

    Leading dimensions broadcast: ``a`` of shape (draws, n, dim) against one ``b``
    of shape (n, dim) gives one distance per draw.
    """
    if a.ndim < 2 or b.ndim < 2 or a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"sliced_wasserstein needs (..., n, dim) sets of one n and dim, got {tuple(a.shape)} and {tuple(b.shape)}")
    if directions.shape[0] != a.shape[-1]:
        raise ValueError(f"directions have dimension {directions.shape[0]}, points {a.shape[-1]}")
    return sliced_wasserstein_sorted(a, sorted_projections(b, directions), directions)
