"""Datasets, files, normalisation and nested splits of the flow task."""

import json

import numpy as np
import pytest
import torch

from epochal.errors import CheckpointError, ConfigError
from epochal.tasks.flow.data import (
    LEGACY_STATS_FILE,
    SPLITS_FILE,
    STATS_FILE,
    SYNTHETIC,
    FlowDataset,
    Fingerprint,
    NormStats,
    build_flow_data,
    load_file,
    load_rows,
)
from epochal.tasks.flow.splits import SCALING_FRACTIONS, nested_splits


@pytest.mark.parametrize("name, dim", [("moons", 2), ("8gaussians", 2), ("checkerboard", 2), ("gmm8d", 8)])
def test_synthetic_datasets_are_seeded_finite_and_shaped(name, dim):
    rows = load_rows(name, 500, None, seed=3)
    assert rows.shape == (500, dim) and np.isfinite(rows).all()
    np.testing.assert_array_equal(rows, load_rows(name, 500, None, seed=3))
    assert not np.array_equal(rows, load_rows(name, 500, None, seed=4))


def test_synthetic_datasets_have_their_shapes():
    eight = SYNTHETIC["8gaussians"](4000, np.random.default_rng(0))
    radius = np.linalg.norm(eight, axis=1)
    assert abs(np.median(radius) - 4.0) < 0.1
    angles = np.round(np.arctan2(eight[:, 1], eight[:, 0]) / (np.pi / 4)) % 8
    assert len(np.unique(angles)) == 8

    board = SYNTHETIC["checkerboard"](4000, np.random.default_rng(0))
    cells = np.floor((board + 4.0) / 2.0).astype(int)
    assert (board >= -4).all() and (board <= 4).all()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only dark cells

    gmm_a = SYNTHETIC["gmm8d"](100, np.random.default_rng(0))
    gmm_b = load_rows("gmm8d", 100, None, seed=0)
    assert gmm_a.shape == gmm_b.shape == (100, 8)


def test_normalisation_round_trips_through_json(tmp_path):
    rows = np.random.default_rng(0).normal([3.0, -2.0, 0.5], [2.0, 0.1, 5.0], size=(200, 3))
    stats = NormStats.fit(rows)
    z = stats.normalize(rows)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(stats.denormalize(z), rows, atol=1e-12)
    stats.save(tmp_path / "stats.json")
    loaded = NormStats.load(tmp_path / "stats.json")
    np.testing.assert_array_equal(loaded.mean, stats.mean)  # exact: JSON float reprs round-trip
    np.testing.assert_array_equal(loaded.std, stats.std)


def test_the_stats_file_holds_tensors_only_and_round_trips_with_its_fingerprint(tmp_path):
    rows = load_rows("moons", 500, None, seed=0)
    data = build_flow_data(rows, 0.1, 0.2, 0.5, seed=3, run_dir=tmp_path)
    saved = torch.load(tmp_path / STATS_FILE, weights_only=True)  # tensors only: no pickled objects
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
    assert torch.equal(saved["mean"], torch.from_numpy(data.stats.mean))
    assert (int(saved["split_seed"]), float(saved["test_fraction"]), float(saved["train_fraction"])) == (3, 0.2, 0.5)
    assert bytes(saved["data_sha256"].tolist()).hex() == Fingerprint.of(rows, 3, 0.1, 0.2, 0.5).data_sha256
    again = build_flow_data(rows, 0.1, 0.2, 0.5, seed=3, saved=tmp_path)  # a resume reads it back
    np.testing.assert_array_equal(again.stats.std, data.stats.std)
    assert torch.equal(again.train.vectors, data.train.vectors)


def test_a_stats_file_fitted_on_other_data_missing_or_damaged_is_refused_naming_it(tmp_path):
    rows = load_rows("moons", 500, None, seed=0)
    build_flow_data(rows, 0.1, 0.1, 0.5, seed=0, run_dir=tmp_path)
    path = tmp_path / STATS_FILE
    with pytest.raises(CheckpointError, match=r"normalization_stats.pt: fitted on other data than this run's: "
                                              r"train_fraction 0.5 \(saved\) vs 1.0 \(this run\)"):
        build_flow_data(rows, 0.1, 0.1, 1.0, seed=0, saved=tmp_path)
    with pytest.raises(CheckpointError, match=r"data_sha256 [0-9a-f]{12}\.\.\. \(saved\)"):
        build_flow_data(rows + 1.0, 0.1, 0.1, 0.5, seed=0, saved=tmp_path)
    stats, fingerprint = NormStats.load_tensors(path)
    NormStats(stats.mean + 0.5, stats.std).save_tensors(path, fingerprint)  # a damaged value
    with pytest.raises(CheckpointError, match=r"normalization_stats.pt: mean .* \(saved\) vs"):
        build_flow_data(rows, 0.1, 0.1, 0.5, seed=0, saved=tmp_path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"normalization_stats.pt: unreadable"):
        build_flow_data(rows, 0.1, 0.1, 0.5, seed=0, saved=tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"normalization_stats.pt: missing"):
        build_flow_data(rows, 0.1, 0.1, 0.5, seed=0, saved=tmp_path)


def test_the_json_stats_of_older_run_folders_are_still_read(tmp_path):
    rows = load_rows("moons", 500, None, seed=0)
    data = build_flow_data(rows, 0.1, 0.1, 0.5, seed=0)
    data.stats.save(tmp_path / LEGACY_STATS_FILE)
    again = build_flow_data(rows, 0.1, 0.1, 0.5, seed=0, saved=tmp_path)
    np.testing.assert_array_equal(again.stats.mean, data.stats.mean)
    assert not (tmp_path / STATS_FILE).exists()  # read, not rewritten


def test_constant_dimension_is_not_blown_up():
    rows = np.column_stack([np.arange(10.0), np.full(10, 7.0)])
    z = NormStats.fit(rows).normalize(rows)
    assert np.isfinite(z).all() and (z[:, 1] == 0).all()


def test_stats_come_from_the_training_subset_only(tmp_path):
    rows = load_rows("moons", 1000, None, seed=0)
    data = build_flow_data(rows, 0.1, 0.1, 0.5, seed=0, run_dir=tmp_path)
    train_rows = rows[data.splits.train(0.5)]
    np.testing.assert_allclose(data.stats.mean, train_rows.mean(axis=0))
    np.testing.assert_allclose(data.stats.std, train_rows.std(axis=0))
    # Changing every held-out row leaves the statistics alone.
    shifted = rows.copy()
    held_out = np.concatenate([data.splits.val, data.splits.test])
    shifted[held_out] += 100.0
    other = build_flow_data(shifted, 0.1, 0.1, 0.5, seed=0)
    np.testing.assert_array_equal(other.stats.mean, data.stats.mean)
    # The same statistics are applied to validation and test rows.
    np.testing.assert_allclose(data.val.vectors.numpy(), data.stats.normalize(rows[data.splits.val]), atol=1e-6)
    np.testing.assert_allclose(data.test.vectors.numpy(), data.stats.normalize(rows[data.splits.test]), atol=1e-6)
    saved, _ = NormStats.load_tensors(tmp_path / STATS_FILE)
    np.testing.assert_array_equal(saved.mean, data.stats.mean)
    sizes = json.loads((tmp_path / SPLITS_FILE).read_text())
    assert sizes["n_train"] == len(data.train) == 400 and sizes["n_val"] == sizes["n_test"] == 100


def test_nested_splits_nest_and_keep_val_test_fixed():
    splits = nested_splits(1000, 0.1, 0.2, np.random.default_rng(0))
    held_out = set(splits.val) | set(splits.test)
    assert len(held_out) == len(splits.val) + len(splits.test) == 300
    previous: set = set()
    for fraction in SCALING_FRACTIONS:
        train = set(splits.train(fraction))
        assert len(train) == round(fraction * 700)
        assert previous <= train
        assert not train & held_out
        previous = train
    assert previous | held_out == set(range(1000))
    again = nested_splits(1000, 0.1, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(again.test, splits.test)
    np.testing.assert_array_equal(again.train(0.25), splits.train(0.25))
    with pytest.raises(ValueError, match="fraction"):
        splits.train(0.0)


def test_flow_dataset_items_and_tensors():
    vectors = torch.arange(12.0).reshape(6, 2)
    dataset = FlowDataset(vectors)
    assert len(dataset) == 6 and dataset.dim == 2
    assert torch.equal(dataset[4]["x1"], vectors[4])
    assert dataset.tensors()["x1"] is vectors
    with pytest.raises(ValueError, match="shape"):
        FlowDataset(torch.zeros(3))


def test_reads_npy_and_csv_with_or_without_header(tmp_path):
    rows = np.random.default_rng(0).normal(size=(30, 3))
    np.save(tmp_path / "data.npy", rows)
    np.testing.assert_array_equal(load_file(tmp_path / "data.npy"), rows)
    np.savetxt(tmp_path / "plain.csv", rows, delimiter=",")
    np.testing.assert_allclose(load_file(tmp_path / "plain.csv"), rows)
    np.savetxt(tmp_path / "header.csv", rows, delimiter=",", header="a,b,c", comments="")
    np.testing.assert_allclose(load_file(tmp_path / "header.csv"), rows)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.with_suffix(".txt").write_text("1,2\n"), "unsupported file type"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros(50)), r"shape \(50,\)"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros((5, 2, 2))), r"shape \(5, 2, 2\)"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros((5, 2))), "need at least"),
        (lambda p: np.save(p.with_suffix(".npy"), np.array([["a", "b"]] * 30)), "expected numbers"),
        (lambda p: np.save(p.with_suffix(".npy"), np.array([{"x": 1}] * 30, dtype=object)), "cannot read"),
        (lambda p: p.with_suffix(".csv").write_text("1,2\n3,oops\n" * 20), "comma-separated"),
    ],
)
def test_bad_files_raise_config_errors_naming_data_path(tmp_path, make, message):
    path = tmp_path / "data.bin"
    make(path)
    target = next(iter(tmp_path.iterdir()), path)
    with pytest.raises(ConfigError, match="task.data_path") as error:
        load_file(target)
    assert error.match(message)


def test_nan_rows_are_reported_with_their_row(tmp_path):
    rows = np.ones((40, 2))
    rows[17, 1] = np.nan
    rows[30, 0] = np.inf
    np.save(tmp_path / "nan.npy", rows)
    with pytest.raises(ConfigError, match=r"task.data_path.*2 NaN or infinite values \(first in row 17\)"):
        load_file(tmp_path / "nan.npy")


def test_file_dataset_needs_a_path():
    with pytest.raises(ConfigError, match="task.data_path: required"):
        load_rows("file", 100, None, seed=0)
