"""A seeded synthetic classification set and a plain batching iterator.

``make_spirals``: ``n_classes`` interleaved spiral arms in a plane, embedded in
``n_features`` dimensions by a random rotation. No straight line separates the
arms, so a linear model fails and an MLP with a hidden layer succeeds.
``make_blobs``: one Gaussian blob per class (linearly separable; a sanity check).

Every function takes a seed and returns the same arrays for the same seed.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from epochal.scratch.errors import ScratchValueError

DATASETS = ("spirals", "blobs")


def _check_sizes(n_samples: int, n_features: int, n_classes: int, min_features: int) -> None:
    if n_classes < 2:
        raise ScratchValueError(f"n_classes must be >= 2, got {n_classes}")
    if n_samples < n_classes:
        raise ScratchValueError(f"n_samples ({n_samples}) must be >= n_classes ({n_classes})")
    if n_features < min_features:
        raise ScratchValueError(f"n_features must be >= {min_features}, got {n_features}")


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def make_spirals(
    n_samples: int, n_features: int = 2, n_classes: int = 3, noise: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float64 points of shape (n, n_features) on spiral arms, int64 labels in [0, k).

    Arm ``c`` is ``r * (cos, sin)(theta)`` with ``r`` uniform in [0, 1] and
    ``theta = 4 r + 2 pi c / k``, plus Gaussian noise of std ``noise`` on theta.
    Extra dimensions carry only noise (std ``noise / 4``) before the rotation.
    """
    _check_sizes(n_samples, n_features, n_classes, 2)
    rng = np.random.default_rng([seed, 1])
    y = np.arange(n_samples) % n_classes
    r = rng.uniform(0.0, 1.0, n_samples)
    theta = 4.0 * r + 2.0 * np.pi * y / n_classes + noise * rng.standard_normal(n_samples)
    x = np.zeros((n_samples, n_features))
    x[:, 0] = r * np.cos(theta)
    x[:, 1] = r * np.sin(theta)
    x[:, 2:] = (noise / 4) * rng.standard_normal((n_samples, n_features - 2))
    x = x @ _random_rotation(rng, n_features)
    order = rng.permutation(n_samples)
    return x[order], y[order].astype(np.int64)


def make_blobs(
    n_samples: int, n_features: int = 2, n_classes: int = 3, noise: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: one isotropic Gaussian (std ``noise``) per class around a random unit-norm center."""
    _check_sizes(n_samples, n_features, n_classes, 1)
    rng = np.random.default_rng([seed, 2])
    centers = rng.standard_normal((n_classes, n_features))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.arange(n_samples) % n_classes
    x = centers[y] + noise * rng.standard_normal((n_samples, n_features))
    order = rng.permutation(n_samples)
    return x[order], y[order].astype(np.int64)


def make_dataset(
    kind: str, n_samples: int, n_features: int, n_classes: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``make_spirals`` or ``make_blobs`` by name."""
    if kind not in DATASETS:
        raise ScratchValueError(f"unknown dataset {kind!r}; allowed: {', '.join(DATASETS)}")
    make = make_spirals if kind == "spirals" else make_blobs
    return make(n_samples, n_features, n_classes, noise, seed)


def train_val_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The last ``val_fraction`` of the (already shuffled) examples are held out."""
    n_val = int(round(val_fraction * len(x)))
    if not 0 < n_val < len(x):
        raise ScratchValueError(
            f"val_fraction {val_fraction} of {len(x)} examples leaves {n_val} held out; "
            "both splits need at least one example"
        )
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    inputs: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{'inputs', 'labels'}`` batches covering every example once.

    With ``seed`` the order is a permutation drawn from a generator seeded by
    ``(seed, epoch)``, so epoch ``e`` has the same order however it is reached;
    without it the examples come in order. The last batch may be smaller unless
    ``drop_last``.
    """
    if len(inputs) != len(labels):
        raise ScratchValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
    if batch_size < 1:
        raise ScratchValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(inputs)
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
    for b in range(num_batches(n, batch_size, drop_last)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield {"inputs": inputs[idx], "labels": labels[idx]}
