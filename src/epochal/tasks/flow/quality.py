"""Sample quality read against what real data of the same size scores (issue 15).

A distance between finite samples is never zero, so the model's distance is read
next to its floor: the distance that real data, drawn afresh, has to the same
reference with the same slices. One draw is a poor floor (its own noise is about a
quarter of its size at 1000 points), so the floor is the mean and spread over many
draws: fresh draws of the generator for a synthetic dataset, and random resplits of
the test set into halves for a file (no generator to draw from). The model's side
is the mean and spread over independent sets of samples.

Read-outs, all from those means:

- ``swd_ratio``: model SW2 / floor SW2; about 1 for a model as close as real data.
- ``swd_z``: (model SW2 - floor SW2) / floor spread; a model within its floor's
  spread has ``swd_z`` below 1 or 2, whatever the dataset's scale.
- ``off_support`` (synthetic data, see ``support.py``): the share of samples outside
  the region that holds 99 % of real data, and ``off_support_ratio``, that share over
  real data's own (about 1 %): the bridges and smears a distance hardly sees.
- ``knn_precision`` / ``knn_recall`` (k-nearest-neighbour balls, as in Kynkäänniemi
  et al. 2019): the share of samples inside some real point's ball (are samples
  realistic?) and of real points inside some sample's ball (is every mode covered?),
  read next to real data's own values, which are below 1 at finite sizes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from epochal.tasks.flow.data import SYNTHETIC
from epochal.tasks.flow.metrics import sliced_wasserstein_sorted, sorted_projections
from epochal.tasks.flow.support import Support


@dataclass(frozen=True)
class Spread:
    """Mean and standard deviation over independent draws (the sd is NaN for one draw)."""

    mean: float
    sd: float
    draws: int

    @classmethod
    def of(cls, values: torch.Tensor) -> "Spread":
        values = values.double().flatten()
        sd = float(values.std()) if len(values) > 1 else math.nan
        return cls(float(values.mean()), sd, len(values))

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.sd:.2g} (sd over {self.draws} draws)"


def ratio(value: float, floor: float) -> float:
    """value / floor, where 0 / 0 counts as on par and x / 0 as infinitely worse."""
    if floor > 0:
        return value / floor
    return 1.0 if value == 0 else math.inf


def z_score(value: float, floor: Spread) -> float:
    """How many of the floor's standard deviations ``value`` lies above the floor's mean."""
    if floor.sd > 0:
        return (value - floor.mean) / floor.sd
    return 0.0 if value == floor.mean else math.copysign(math.inf, value - floor.mean)


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of ``points`` (n, dim) to its k-th nearest other row."""
    distances, _ = cKDTree(points).query(points, k=k + 1)
    return distances[:, k]  # column 0 is the row itself


def _covered(centres: np.ndarray, radii: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which ``points`` lie in at least one ball (centre i, radius i)."""
    inside = cKDTree(points).query_ball_point(centres, r=radii, return_sorted=False)
    covered = np.zeros(len(points), dtype=bool)
    covered[np.fromiter(itertools.chain.from_iterable(inside), dtype=np.intp)] = True
    return covered


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int, real_radii: np.ndarray | None = None
                         ) -> tuple[float, float]:
    """(precision, recall) of one sample set ``fake`` (m, dim) against one real set (n, dim).

    A k-d tree finds the points inside each ball, so the cost grows with the points
    found rather than with n * m, as all pairwise distances would.
    """
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    precision = _covered(real, real_radii, fake).mean()
    recall = _covered(fake, knn_radii(fake, k), real).mean()
    return float(precision), float(recall)


def _knn_spreads(references: np.ndarray, radii: np.ndarray, sets: np.ndarray, k: int) -> tuple[Spread, Spread]:
    """Precision and recall of each set against its reference (set i against reference i mod count)."""
    pairs = [knn_precision_recall(references[i % len(references)], s, k, radii[i % len(references)])
             for i, s in enumerate(sets)]
    precision, recall = torch.tensor(pairs, dtype=torch.float64).reshape(-1, 2).unbind(dim=1)
    return Spread.of(precision), Spread.of(recall)


@dataclass
class Yardstick:
    """The references samples are compared with, and what real data of the same size scores."""

    references: torch.Tensor  # (1, n, dim) test rows, or (draws, n, dim) resplit halves for a file
    directions: torch.Tensor  # SW2 slices, the same for samples and floor
    reference_sorted: torch.Tensor  # the references' sorted projections on the slices, computed once
    mean: torch.Tensor  # (dim,) normalisation, to measure the support in the data's own units
    std: torch.Tensor
    support: Support | None  # known shape of a synthetic dataset; None for a file
    knn_k: int
    reference_rows: np.ndarray  # the references on the host, for the k-d trees of the k-NN measures
    reference_radii: np.ndarray  # (len(references), n) k-NN radii of the references, computed once
    swd_floor: Spread
    real_off_support: Spread | None
    real_precision: Spread
    real_recall: Spread

    def metric_names(self) -> list[str]:
        """The keys measure() returns."""
        names = ["sample_draws", "sample_swd", "sample_swd_sd", "swd_floor", "swd_ratio", "swd_z"]
        if self.support is not None:
            names += ["off_support", "off_support_ratio"]
        return [*names, "knn_precision", "knn_recall"]

    def measure(self, samples: torch.Tensor) -> dict[str, float]:
        """Every read-out for sample sets (draws, n, dim), in normalised units like the references."""
        swd = Spread.of(sliced_wasserstein_sorted(samples, _matched(self.reference_sorted, len(samples)), self.directions))
        out = {
            "sample_draws": float(swd.draws),
            "sample_swd": swd.mean,
            "sample_swd_sd": swd.sd,
            "swd_floor": self.swd_floor.mean,
            "swd_ratio": ratio(swd.mean, self.swd_floor.mean),
            "swd_z": z_score(swd.mean, self.swd_floor),
        }
        if self.support is not None:
            off = Spread.of(self.support.off_support(samples.double() * self.std + self.mean))
            out["off_support"] = off.mean
            out["off_support_ratio"] = ratio(off.mean, self.real_off_support.mean)
        sets = samples.float().cpu().numpy()
        precision, recall = _knn_spreads(self.reference_rows, self.reference_radii, sets, self.knn_k)
        out["knn_precision"], out["knn_recall"] = precision.mean, recall.mean
        return out

    def floor_summary(self) -> dict[str, float]:
        """What real data scores, for result.json next to the model's test figures."""
        out = {"swd_floor": self.swd_floor.mean, "swd_floor_sd": self.swd_floor.sd, "floor_draws": self.swd_floor.draws,
               "real_knn_precision": self.real_precision.mean, "real_knn_recall": self.real_recall.mean}
        if self.real_off_support is not None:
            out["real_off_support"] = self.real_off_support.mean
            out["real_off_support_sd"] = self.real_off_support.sd
        return out

    def describe(self) -> str:
        n = self.references.shape[1]
        source = "fresh draws of the generator" if self.support is not None else "resplits of the test set"
        line = f"floor at {n} points over {self.swd_floor.draws} {source}: SW2 {self.swd_floor}"
        if self.real_off_support is not None:
            line += f"; real data off support {100 * self.real_off_support.mean:.2f} %"
        return line


def real_draws(dataset: str, test: torch.Tensor, n: int, draws: int, seed: int,
               normalize: Callable[[np.ndarray], np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(references, real sets) of n rows each: the test set against fresh generator draws for a synthetic
    dataset, or ``draws`` random halves of the test set against the other halves for a file."""
    if dataset in SYNTHETIC:
        rows = SYNTHETIC[dataset](draws * n, np.random.default_rng([seed, 4]))
        fresh = torch.from_numpy(normalize(rows).astype(np.float32)).reshape(draws, n, -1)
        return test[None, :n], fresh
    generator = torch.Generator().manual_seed(seed)
    orders = torch.stack([torch.randperm(len(test), generator=generator)[: 2 * n] for _ in range(draws)])
    halves = test[orders]
    return halves[:, :n], halves[:, n:]


def _matched(per_reference: torch.Tensor, count: int) -> torch.Tensor:
    """Set i is compared with reference i mod len(references): the one test set, or resplit i."""
    return per_reference[torch.arange(count, device=per_reference.device) % len(per_reference)]


def build_yardstick(references: torch.Tensor, real: torch.Tensor, directions: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor, support: Support | None, knn_k: int) -> Yardstick:
    """Score every real set against its reference once: the floor of each read-out."""
    reference_sorted = sorted_projections(references, directions)
    reference_rows = references.float().cpu().numpy()
    reference_radii = np.stack([knn_radii(r, knn_k) for r in reference_rows])
    precision, recall = _knn_spreads(reference_rows, reference_radii, real.float().cpu().numpy(), knn_k)
    off = Spread.of(support.off_support(real.double() * std + mean)) if support is not None else None
    return Yardstick(
        references=references, directions=directions, mean=mean, std=std, support=support, knn_k=knn_k,
        reference_rows=reference_rows, reference_radii=reference_radii, reference_sorted=reference_sorted,
        swd_floor=Spread.of(sliced_wasserstein_sorted(real, _matched(reference_sorted, len(real)), directions)),
        real_off_support=off, real_precision=precision, real_recall=recall,
    )
