"""The synthetic sets and the batching iterator."""

import numpy as np
import pytest

from epochal.scratch import iterate_batches, make_blobs, make_dataset, make_spirals, num_batches


@pytest.mark.parametrize("make", [make_spirals, make_blobs])
def test_seeded_shapes_and_balanced_classes(make):
    x, y = make(300, n_features=5, n_classes=3, seed=1)
    assert x.shape == (300, 5) and x.dtype == np.float64
    assert y.shape == (300,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [100, 100, 100]
    x2, y2 = make(300, n_features=5, n_classes=3, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = make(300, n_features=5, n_classes=3, seed=2)
    assert not np.array_equal(x, x3)


def test_bad_dataset_settings_raise_value_error():
    with pytest.raises(ValueError, match="unknown dataset 'moons'; allowed: spirals, blobs"):
        make_dataset("moons", 100, 2, 2, 0.1, 0)
    with pytest.raises(ValueError, match="n_features must be >= 2"):
        make_spirals(100, n_features=1)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        make_blobs(100, n_classes=1)


def test_batches_cover_every_example_once_in_a_seeded_order():
    x = np.arange(10.0)[:, None]
    y = np.arange(10)
    batches = list(iterate_batches(x, y, 4, seed=3, epoch=0))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2] and num_batches(10, 4) == 3
    order = np.concatenate([b["labels"] for b in batches])
    assert sorted(order.tolist()) == list(range(10))
    np.testing.assert_array_equal(np.concatenate([b["inputs"][:, 0] for b in batches]), order)
    again = np.concatenate([b["labels"] for b in iterate_batches(x, y, 4, seed=3, epoch=0)])
    other_epoch = np.concatenate([b["labels"] for b in iterate_batches(x, y, 4, seed=3, epoch=1)])
    np.testing.assert_array_equal(order, again)
    assert not np.array_equal(order, other_epoch)


def test_unshuffled_and_drop_last():
    x, y = np.zeros((10, 2)), np.arange(10)
    batches = list(iterate_batches(x, y, 4, drop_last=True))
    assert [b["labels"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert num_batches(10, 4, drop_last=True) == 2
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(iterate_batches(x, y, 0))
    with pytest.raises(ValueError, match="differ in length"):
        list(iterate_batches(x, y[:3], 2))
