"""Augmentations of data vectors, drawn on the batch's device with the global torch RNG.

An augmentation is only right for data whose distribution it leaves unchanged:
otherwise the flow learns the symmetrised distribution instead of the data's.

- ``none``: the data as it is.
- ``flip``: an independent random sign per sample and dimension, i.e. reflections
  through the training mean along each axis. Fits "8gaussians"; not "moons",
  "checkerboard" (a flip of one axis swaps dark and light cells) or "gmm8d".
- ``rotate``: a uniformly random rotation of 2-D data about the training mean.
  Fits rotation-invariant data (rings, radial mixtures); "8gaussians" only
  approximately (it is invariant to multiples of 45 degrees, not to every angle).

Vectors arrive normalised, ``z = (x - mean) / std``. Reflections through the mean
commute with the per-dimension scaling, so ``flip`` acts on ``z`` directly; a
rotation does not, so ``rotate`` scales back by ``std`` first and rotates raw offsets.
"""

from __future__ import annotations

import math

import torch

AUGMENTATIONS = ("none", "flip", "rotate")


def augment(z: torch.Tensor, kind: str, std: torch.Tensor) -> torch.Tensor:
    """A randomly transformed copy of the normalised batch ``z`` (n, dim); ``std`` (dim,) on z's device."""
    if kind == "none":
        return z
    if kind == "flip":
        return z * (2 * torch.randint_like(z, 0, 2) - 1)
    if kind == "rotate":
        return _rotate(z * std) / std
    raise ValueError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTATIONS)}")


def _rotate(offsets: torch.Tensor) -> torch.Tensor:
    if offsets.shape[1] != 2:
        raise ValueError(f"rotate needs 2-D vectors, got dimension {offsets.shape[1]}")
    angle = 2 * math.pi * torch.rand_like(offsets[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    x, y = offsets[:, 0], offsets[:, 1]
    return torch.stack([cos * x - sin * y, sin * x + cos * y], dim=1)
