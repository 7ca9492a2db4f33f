import torch

from epochal.data import DeviceBatches, epoch_order


def test_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(100, seed=1, epoch=3), epoch_order(100, seed=1, epoch=3))
    assert not torch.equal(epoch_order(100, seed=1, epoch=3), epoch_order(100, seed=1, epoch=4))
    assert not torch.equal(epoch_order(100, seed=1, epoch=3), epoch_order(100, seed=2, epoch=3))
    assert sorted(epoch_order(100, 0, 0).tolist()) == list(range(100))


def test_starting_at_a_position_yields_exactly_the_remaining_batches():
    data = {"x": torch.arange(50)}
    batches = DeviceBatches(data, torch.device("cpu"), batch_size=8, seed=0, drop_last=False)
    full = [b["x"] for b in batches.epoch(2)]
    tail = [b["x"] for b in batches.epoch(2, start=4)]
    assert len(full) == len(batches) == 7
    assert all(torch.equal(a, b) for a, b in zip(full[4:], tail)) and len(tail) == 3
    assert sorted(torch.cat(full).tolist()) == list(range(50))


def test_drop_last_drops_the_incomplete_batch():
    batches = DeviceBatches({"x": torch.arange(50)}, torch.device("cpu"), batch_size=8, seed=0, drop_last=True)
    assert len(batches) == 6 and all(len(b["x"]) == 8 for b in batches.epoch(0))
