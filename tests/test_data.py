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


def test_loader_batches_follow_the_same_order_as_device_batches():
    from epochal.data import LoaderBatches

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return {"x": torch.tensor(i)}

    on_device = DeviceBatches({"x": torch.arange(50)}, torch.device("cpu"), batch_size=8, seed=3, drop_last=False)
    loaded = LoaderBatches(Items(), torch.device("cpu"), batch_size=8, seed=3, drop_last=False)
    for start in (0, 5):
        a = [b["x"] for b in on_device.epoch(1, start)]
        b = [b["x"] for b in loaded.epoch(1, start)]
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
