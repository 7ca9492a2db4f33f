"""Vectors to learn a flow towards: seeded synthetic distributions or a user's file.

Everything here works on raw NumPy rows of shape ``(n, dim)``; :func:`build_flow_data`
splits them (see ``splits.py``), fits the normalisation on the training subset only and
hands back normalised float32 datasets.

The normalisation goes to ``normalization_stats.pt`` (seed 004's name): tensors only, so
``torch.load(weights_only=True)`` reads it, holding mean, std and a fingerprint of what they
were fitted on (the rows' SHA-256, the split seed and fractions). A resumed or loaded run reads
it back and refuses, naming the file and what differs, when it is missing, unreadable or was
fitted on other data: the statistics are never silently fitted again. ``normalization_stats.json``
of older run folders is still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from epochal.errors import CheckpointError, ConfigError
from epochal.io import atomic_write_bytes, atomic_write_text
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
class Fingerprint:
    """What the statistics were fitted on: a change to any of these changes them."""

    data_sha256: str  # the raw rows (float64, with their shape): another dataset, file or data_seed
    split_seed: int  # draws the validation/test/train split (task.data_seed)
    val_fraction: float  # rows held out for validation
    test_fraction: float  # rows held out for test
    train_fraction: float  # the share of the training pool the statistics are fitted on

    @classmethod
    def of(cls, rows: np.ndarray, seed: int, val_fraction: float, test_fraction: float,
           train_fraction: float) -> "Fingerprint":
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        digest = hashlib.sha256(str(rows.shape).encode() + rows.tobytes()).hexdigest()
        return cls(digest, int(seed), float(val_fraction), float(test_fraction), float(train_fraction))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"data_sha256": torch.tensor(list(bytes.fromhex(self.data_sha256)), dtype=torch.uint8),
                "split_seed": torch.tensor(self.split_seed, dtype=torch.int64),
                **{name: torch.tensor(getattr(self, name), dtype=torch.float64)
                   for name in ("val_fraction", "test_fraction", "train_fraction")}}

    @classmethod
    def from_tensors(cls, saved: dict[str, torch.Tensor]) -> "Fingerprint":
        return cls(bytes(saved["data_sha256"].tolist()).hex(), int(saved["split_seed"]),
                   *(float(saved[name]) for name in ("val_fraction", "test_fraction", "train_fraction")))

    def differences(self, other: "Fingerprint") -> list[str]:
        """'name saved vs now' for each field that differs."""
        shown = lambda f, v: v[:12] + "..." if f == "data_sha256" else v  # noqa: E731
        return [f"{f.name} {shown(f.name, getattr(self, f.name))} (saved) vs {shown(f.name, getattr(other, f.name))} "
                "(this run)" for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


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

    def save_tensors(self, path: Path, fingerprint: Fingerprint) -> None:
        """normalization_stats.pt: tensors only (loads with weights_only=True), written atomically."""
        buffer = io.BytesIO()
        torch.save({"mean": torch.from_numpy(self.mean.astype(np.float64)),
                    "std": torch.from_numpy(self.std.astype(np.float64)), **fingerprint.tensors()}, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load_tensors(cls, path: Path) -> tuple["NormStats", Fingerprint]:
        """The statistics and their fingerprint; one CheckpointError naming the file if it is not such a file."""
        what = "allowed: the normalization_stats.pt this run wrote"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            stats = cls(mean=saved["mean"].double().numpy(), std=saved["std"].double().numpy())
            return stats, Fingerprint.from_tensors(saved)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; {what}") from None
        except Exception as err:  # noqa: BLE001 - truncated, not a torch file, a pickle with code, keys missing
            raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                                  f"{what}") from None

    @classmethod
    def load(cls, path: Path) -> "NormStats":
        """The JSON statistics of older run folders."""
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


STATS_FILE = "normalization_stats.pt"
LEGACY_STATS_FILE = "normalization_stats.json"  # what run folders held before the .pt: still read
SPLITS_FILE = "splits.json"


def read_saved_stats(folder: Path, expected: Fingerprint, fitted: NormStats) -> NormStats:
    """The statistics a run folder holds, checked against what this run would fit them on (``expected``)
    and against the fit itself (a damaged value); one CheckpointError naming the file and what differs."""
    path, legacy = Path(folder) / STATS_FILE, Path(folder) / LEGACY_STATS_FILE
    if not path.exists() and legacy.exists():
        try:
            stats = NormStats.load(legacy)
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{legacy}: unreadable ({err}); allowed: the normalization_stats.json this "
                                  "run wrote") from None
        return _same_values(legacy, stats, fitted)
    if not path.exists():
        raise CheckpointError(f"{path}: missing, so this run's normalisation is unknown (it is not fitted again "
                              "silently); allowed: the file this run wrote, or start the run afresh")
    stats, found = NormStats.load_tensors(path)
    differs = found.differences(expected)
    if differs:
        raise CheckpointError(f"{path}: fitted on other data than this run's: {'; '.join(differs)}; refusing "
                              "to go on with another normalisation")
    return _same_values(path, stats, fitted)


def _same_values(path: Path, saved: NormStats, fitted: NormStats) -> NormStats:
    """``saved`` if its values are those of the training rows (to float rounding); else a damaged file."""
    for name in ("mean", "std"):
        a, b = getattr(saved, name), getattr(fitted, name)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=1e-12):
            raise CheckpointError(f"{path}: {name} {np.asarray(a).tolist()} (saved) vs {np.asarray(b).tolist()} "
                                  "(the training rows'); refusing to go on with another normalisation")
    return saved


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
    saved: Path | None = None,
) -> FlowData:
    """Split ``rows``, fit the normalisation on the training subset only, normalise every split.

    With ``saved`` (a run folder being resumed or loaded) the statistics are read back from it and
    checked; otherwise, with ``run_dir``, the statistics and the split sizes are written there.
    """
    splits = nested_splits(len(rows), val_fraction, test_fraction, np.random.default_rng([seed, 1]))
    train_rows = rows[splits.train(train_fraction)]
    stats = NormStats.fit(train_rows)
    fingerprint = Fingerprint.of(rows, seed, val_fraction, test_fraction, train_fraction)
    if saved is not None:
        stats = read_saved_stats(saved, fingerprint, stats)

    def dataset(part: np.ndarray) -> FlowDataset:
        return FlowDataset(torch.from_numpy(stats.normalize(part).astype(np.float32)))

    data = FlowData(
        train=dataset(train_rows),
        val=dataset(rows[splits.val]),
        test=dataset(rows[splits.test]),
        stats=stats,
        splits=splits,
    )
    if run_dir is not None and saved is None:
        stats.save_tensors(Path(run_dir) / STATS_FILE, fingerprint)
        summary = {"train_fraction": train_fraction, "seed": seed, **splits.sizes(train_fraction)}
        atomic_write_text(Path(run_dir) / SPLITS_FILE, json.dumps(summary, indent=1) + "\n")
    return data
