"""Vectors to learn a flow towards: seeded synthetic distributions or a user's file.

Everything here works on raw NumPy rows of shape ``(n, dim)``; :func:`build_flow_data`
splits them (see ``splits.py``), fits the normalisation on the training subset only and
hands back normalised float32 datasets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from epochal.errors import ConfigError
from epochal.io import atomic_write_text
from epochal.tasks.flow.splits import Splits, nested_splits


def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaving half circles with a little Gaussian noise."""
    angle = rng.uniform(0.0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((n, 2))


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight equal Gaussians on a circle of radius 4, each with standard deviation 0.5."""
    angle = rng.integers(0, 8, n) * (math.pi / 4)
    centres = 4.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.5 * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 dark cells of a 4 x 4 board covering [-4, 4]^2."""
    dark_cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    cell = dark_cells[rng.integers(0, len(dark_cells), n)]
    return -4.0 + 2.0 * (cell + rng.random((n, 2)))


# The mixture's means are part of the dataset's definition, so they come from a
# constant seed: "gmm8d" is the same distribution whatever task.data_seed is.
GMM_MEANS = 3.0 * np.random.default_rng(8).standard_normal((8, 8))


def gaussian_mixture_8d(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight equal isotropic Gaussians (std 0.5) in 8-D around fixed random means."""
    component = rng.integers(0, len(GMM_MEANS), n)
    return GMM_MEANS[component] + 0.5 * rng.standard_normal((n, GMM_MEANS.shape[1]))


SYNTHETIC = {
    "moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "gmm8d": gaussian_mixture_8d,
}

# Smallest file that still gives every split (and both halves of the test set) some rows.
MIN_ROWS = 20


def load_file(path: str | Path) -> np.ndarray:
    """Rows of a .npy or .csv file as float64 ``(n, dim)``; ConfigError naming task.data_path otherwise.

    A CSV is comma-separated numbers with an optional header row.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task.data_path: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _read_npy(path)
    elif suffix == ".csv":
        array = _read_csv(path)
    else:
        raise ConfigError(f"task.data_path: unsupported file type {suffix!r} ({path}); allowed: .npy, .csv")
    return check_vectors(array, f"task.data_path ({path})")


def _read_npy(path: Path) -> np.ndarray:
    try:
        # allow_pickle=False: a .npy holding Python objects could run code when loaded.
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ConfigError(f"task.data_path: cannot read {path} as a numeric .npy array: {error}") from None


def _read_csv(path: Path) -> np.ndarray:
    for header_rows in (0, 1):
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=header_rows)
        except ValueError as error:
            problem = error
    raise ConfigError(f"task.data_path: cannot read {path} as comma-separated numbers: {problem}")


def check_vectors(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as float64 if it is a finite numeric (n, dim) matrix with enough rows."""
    if array.ndim != 2 or array.shape[1] < 1:
        raise ConfigError(f"{where}: expected a 2-D array of shape (n_samples, dim), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ConfigError(f"{where}: expected numbers, got dtype {array.dtype}")
    if array.shape[0] < MIN_ROWS:
        raise ConfigError(f"{where}: has {array.shape[0]} rows; need at least {MIN_ROWS} to split")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        first_row = int(np.argmax(bad.any(axis=1)))
        raise ConfigError(
            f"{where}: contains {int(bad.sum())} NaN or infinite values (first in row {first_row}); "
            "remove or impute them"
        )
    return array


@dataclass(frozen=True)
class NormStats:
    """Per-dimension mean and standard deviation of the training rows."""

    mean: np.ndarray
    std: np.ndarray

    FORMAT = "epochal.flow.normalization/1"

    @classmethod
    def fit(cls, rows: np.ndarray) -> "NormStats":
        std = rows.std(axis=0)
        # A constant dimension has nothing to scale; dividing by ~0 would blow it up.
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean=rows.mean(axis=0), std=std)

    def normalize(self, rows: np.ndarray) -> np.ndarray:
        return (rows - self.mean) / self.std

    def denormalize(self, rows: np.ndarray) -> np.ndarray:
        return rows * self.std + self.mean

    def save(self, path: Path) -> None:
        """JSON, not a pickle: readable by anything and safe to load. Float reprs round-trip exactly."""
        payload = {"format": self.FORMAT, "mean": self.mean.tolist(), "std": self.std.tolist()}
        atomic_write_text(path, json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "NormStats":
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != cls.FORMAT:
            raise ValueError(f"{path}: not a flow normalisation file (format {payload.get('format')!r})")
        return cls(mean=np.asarray(payload["mean"], dtype=np.float64), std=np.asarray(payload["std"], dtype=np.float64))


class FlowDataset(torch.utils.data.Dataset):
    """Normalised float32 vectors; an item is ``{"x1": row}``, the data end of the flow."""

    def __init__(self, vectors: torch.Tensor):
        if vectors.ndim != 2:
            raise ValueError(f"FlowDataset: expected (n, dim) vectors, got shape {tuple(vectors.shape)}")
        self.vectors = vectors

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x1": self.vectors[index]}

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole set as one batchable dict, for the loop's device-resident path."""
        return {"x1": self.vectors}


@dataclass
class FlowData:
    train: FlowDataset
    val: FlowDataset
    test: FlowDataset
    stats: NormStats
    splits: Splits


STATS_FILE = "normalization_stats.json"
SPLITS_FILE = "splits.json"


def load_rows(dataset: str, n_samples: int, data_path: str | None, seed: int) -> np.ndarray:
    """Raw rows of a synthetic dataset (seeded) or of the user's file."""
    if dataset == "file":
        if data_path is None:
            raise ConfigError("task.data_path: required when task.dataset = 'file'")
        return load_file(data_path)
    if dataset not in SYNTHETIC:
        raise ConfigError(f"task.dataset: unknown dataset {dataset!r}; allowed: {', '.join([*SYNTHETIC, 'file'])}")
    return SYNTHETIC[dataset](n_samples, np.random.default_rng([seed, 0]))


def build_flow_data(
    rows: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    train_fraction: float,
    seed: int,
    run_dir: Path | None = None,
) -> FlowData:
    """Split ``rows``, fit the normalisation on the training subset only, normalise every split.

    With ``run_dir`` the statistics and the split sizes are written there.
    """
    splits = nested_splits(len(rows), val_fraction, test_fraction, np.random.default_rng([seed, 1]))
    train_rows = rows[splits.train(train_fraction)]
    stats = NormStats.fit(train_rows)

    def dataset(part: np.ndarray) -> FlowDataset:
        return FlowDataset(torch.from_numpy(stats.normalize(part).astype(np.float32)))

    data = FlowData(
        train=dataset(train_rows),
        val=dataset(rows[splits.val]),
        test=dataset(rows[splits.test]),
        stats=stats,
        splits=splits,
    )
    if run_dir is not None:
        stats.save(Path(run_dir) / STATS_FILE)
        summary = {"train_fraction": train_fraction, "seed": seed, **splits.sizes(train_fraction)}
        atomic_write_text(Path(run_dir) / SPLITS_FILE, json.dumps(summary, indent=1) + "\n")
    return data
