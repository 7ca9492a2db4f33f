"""Sample-quality measures against cases with known answers: floor, support, k-NN precision/recall."""

import math

import numpy as np
import pytest
import torch

from epochal.tasks.flow.data import SYNTHETIC, NormStats
from epochal.tasks.flow.metrics import random_directions
from epochal.tasks.flow.quality import Spread, build_yardstick, knn_precision_recall, real_draws, z_score
from epochal.tasks.flow.support import SHAPE_DISTANCE, fit_support


def yardstick_for(dataset, rows, n=500, draws=24, seed=0):
    """A yardstick as the task builds one: references from ``rows`` (the 'test set'), real sets drawn afresh."""
    stats = NormStats.fit(rows)
    test = torch.from_numpy(stats.normalize(rows).astype(np.float32))
    references, real = real_draws(dataset, test, n, draws, seed, stats.normalize)
    support = fit_support(dataset, seed) if dataset in SHAPE_DISTANCE else None
    directions = random_directions(rows.shape[1], 64, torch.Generator().manual_seed(seed))
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return build_yardstick(references, real, directions, as_tensor(stats.mean), as_tensor(stats.std), support, 3), stats


def normalized(stats, rows):
    return torch.from_numpy(stats.normalize(rows).astype(np.float32))


@pytest.mark.parametrize("dataset", ["moons", "8gaussians"])
def test_fresh_data_scores_at_the_floor_and_a_shift_does_not(dataset):
    generate = SYNTHETIC[dataset]
    yardstick, stats = yardstick_for(dataset, generate(500, np.random.default_rng(1)))
    assert yardstick.swd_floor.draws == 24 and yardstick.swd_floor.sd > 0
    # Eight more draws from the same distribution, independent of the floor's: a perfect model.
    same = normalized(stats, generate(8 * 500, np.random.default_rng(2))).reshape(8, 500, 2)
    measured = yardstick.measure(same)
    assert abs(measured["swd_ratio"] - 1) < 0.25 and abs(measured["swd_z"]) < 1.5
    assert measured["sample_swd_sd"] > 0
    shifted = yardstick.measure(same + torch.tensor([0.5, 0.0]))
    assert shifted["swd_ratio"] > 2 and shifted["swd_z"] > 4


def test_a_file_floor_comes_from_resplits_of_the_test_set():
    rows = np.random.default_rng(3).standard_normal((1000, 3))
    yardstick, stats = yardstick_for("file", rows, n=500, draws=24)
    assert yardstick.support is None and yardstick.references.shape == (24, 500, 3)
    same = normalized(stats, np.random.default_rng(4).standard_normal((8 * 500, 3))).reshape(8, 500, 3)
    measured = yardstick.measure(same)
    assert abs(measured["swd_ratio"] - 1) < 0.25 and "off_support" not in measured
    assert set(measured) == set(yardstick.metric_names())


@pytest.mark.parametrize("dataset", ["moons", "8gaussians", "gmm8d"])
def test_real_data_is_off_support_one_percent_of_the_time(dataset):
    support = fit_support(dataset, seed=0)
    fresh = torch.from_numpy(SYNTHETIC[dataset](20000, np.random.default_rng(5)))
    assert 0.007 < float(support.off_support(fresh)) < 0.013  # 1 % +- 4 standard errors


@pytest.mark.parametrize("dataset, noise", [("moons", 0.1), ("8gaussians", 0.7), ("gmm8d", 0.5)])
def test_a_smeared_sample_is_clearly_off_support(dataset, noise):
    support = fit_support(dataset, seed=0)
    rows = SYNTHETIC[dataset](20000, np.random.default_rng(6))
    smeared = rows + noise * np.random.default_rng(7).standard_normal(rows.shape)
    assert float(support.off_support(torch.from_numpy(smeared))) > 0.1  # 10x real data's share


def test_moons_bridges_are_off_support_and_the_arcs_are_not():
    support = fit_support("moons", seed=0)
    angle = torch.linspace(0, math.pi, 50, dtype=torch.float64)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    assert float(SHAPE_DISTANCE["moons"](torch.cat([upper, lower])).abs().max()) < 1e-12
    # The straight segment from the upper moon's tip (1, 0) across to the lower moon's (0, 0.5).
    bridge = torch.stack([torch.linspace(0.2, 0.8, 20), torch.linspace(0.1, 0.4, 20)], dim=1).double()
    assert float(support.off_support(bridge)) > 0.5


def test_checkerboard_support_is_the_dark_cells():
    support = fit_support("checkerboard", seed=0)
    assert support.threshold == 0.0  # every real point lies in a dark cell
    dark, light = torch.tensor([[-3.0, -3.0], [1.0, 1.0]]), torch.tensor([[-1.0, -3.0], [3.0, 1.0]])
    assert float(support.off_support(dark.double())) == 0.0 and float(support.off_support(light.double())) == 1.0


def test_knn_precision_and_recall_separate_missing_modes_from_smears():
    rng = np.random.default_rng(8)
    real = SYNTHETIC["8gaussians"](2000, rng)
    same = SYNTHETIC["8gaussians"](2000, rng)
    precision, recall = knn_precision_recall(real, same, k=3)
    assert precision > 0.9 and recall > 0.9
    half_the_modes = same[np.arctan2(same[:, 1], same[:, 0]) > -0.2]  # drops the modes at -45..-180 degrees
    precision, recall = knn_precision_recall(real, half_the_modes[:1000], k=3)
    assert precision > 0.9 and recall < 0.7  # realistic samples, but modes are missing
    smeared = same + 1.5 * rng.standard_normal(same.shape)
    precision, recall = knn_precision_recall(real, smeared, k=3)
    assert precision < 0.7  # many samples lie where no real point is


def test_spread_ratio_and_z_edge_cases():
    spread = Spread.of(torch.tensor([1.0, 2.0, 3.0]))
    assert (spread.mean, spread.sd, spread.draws) == (2.0, 1.0, 3)
    assert math.isnan(Spread.of(torch.tensor([1.0])).sd)
    assert z_score(4.0, spread) == 2.0
    assert z_score(2.0, Spread(2.0, 0.0, 5)) == 0.0 and z_score(3.0, Spread(2.0, 0.0, 5)) == math.inf
