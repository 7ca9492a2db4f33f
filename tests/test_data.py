import json

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


# --- drop_last end to end ------------------------------------------------------------------------

import pytest  # noqa: E402

from epochal.tasks.toy import ToyTask  # noqa: E402


class CountingToy(ToyTask):
    """The toy task that notes each batch's examples (by their first input value) on the host."""

    name = "toy"

    def __init__(self):
        self.batches = []

    def loss(self, model, batch):
        self.batches.append(batch["x"][:, 0].clone())
        return super().loss(model, batch)


@pytest.mark.parametrize("drop_last, sizes", [(True, [64, 64, 64]), (False, [64, 64, 64, 8])])
def test_drop_last_with_uneven_data_sets_the_steps_and_the_examples_seen(tmp_path, drop_last, sizes):
    from epochal import run

    task = CountingToy()
    result = run(task, overrides={"train.max_epochs": 2, "train.progress": False, "task.n_train": 200,
                                  "task.n_eval": 16, "train.batch_size": 64, "train.drop_last": drop_last,
                                  "log.plots": False, "train.log_every": 1},
                 out_dir=tmp_path, experiment_id="r", log=lambda _: None)
    steps = len(sizes)
    assert result.status == "completed" and result.result["steps"] == 2 * steps
    assert [len(b) for b in task.batches] == sizes * 2
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history if "epoch_end" not in h] == [1] * steps + [2] * steps
    epochs = [torch.cat(task.batches[:steps]), torch.cat(task.batches[steps:])]
    for seen in epochs:
        assert len(seen) == len(set(seen.tolist())) == sum(sizes)  # no example twice in an epoch
    if drop_last:  # a fresh permutation each epoch: a different 8 are left out
        assert set(epochs[0].tolist()) != set(epochs[1].tolist())
    else:
        assert set(epochs[0].tolist()) == set(epochs[1].tolist())
