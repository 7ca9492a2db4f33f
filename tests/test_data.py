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


# --- every kind of data: its order, its resume, its limits -----------------------------------------

import time  # noqa: E402

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, TensorDataset  # noqa: E402

from epochal.data import Batches, IterableBatches, UserLoaderBatches, make_batches  # noqa: E402
from epochal.errors import ConfigError  # noqa: E402

CPU = torch.device("cpu")


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.tensor(i)


def order(batches, epoch, start=0):
    return [b.tolist() for b in batches.epoch(epoch, start)]


def test_a_shuffling_dataloader_is_ordered_by_seed_and_epoch_and_resumes_at_a_position():
    loader = DataLoader(Items(), batch_size=6, shuffle=True)
    batches = make_batches(loader, CPU, batch_size=64, seed=3, drop_last=False)
    assert isinstance(batches, UserLoaderBatches) and len(batches) == 4
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    first = order(batches, 1)
    assert torch.rand(1) == expected_draw  # the order came from (seed, epoch), not the global stream
    assert first == order(batches, 1) and first != order(batches, 2)
    assert first[2:] == order(batches, 1, start=2)
    assert sorted(sum(first, [])) == list(range(20)) and [len(b) for b in first] == [6, 6, 6, 2]
    assert loader.sampler.generator is None  # the user's sampler is left as it was
    other = make_batches(DataLoader(Items(), batch_size=6, shuffle=True), CPU, 64, seed=4, drop_last=False)
    assert order(other, 1) != first
    assert batches.order_sha256(1) is not None and batches.order_sha256(7) is None


def test_a_sampler_with_its_own_generator_draws_a_resumed_epoch_as_it_drew_it_before():
    def loader():
        return DataLoader(Items(), batch_size=6, sampler=RandomSampler(Items(), generator=torch.Generator().manual_seed(5)))

    running = UserLoaderBatches(loader(), CPU, seed=0)
    order(running, 0)
    epoch_1 = [b.tolist() for b in running.epoch(1)]
    saved = running.state_dict()  # as a checkpoint in the middle of epoch 1 holds it
    assert saved["epoch"] == 1
    resumed = UserLoaderBatches(loader(), CPU, seed=0)  # a new process: the generator is back at its seed
    resumed.load_state_dict(saved)
    assert order(resumed, 1, start=2) == epoch_1[2:]
    fresh = UserLoaderBatches(loader(), CPU, seed=0)
    assert order(fresh, 1, start=2) != epoch_1[2:]  # without the saved state it would not be
    assert UserLoaderBatches(loader(), CPU, seed=0).state_dict() == {}


class Stream(IterableDataset):
    """Five examples a pass, which depend on the epoch it was told."""

    def __init__(self):
        self.epoch = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.arange(5) + 100 * self.epoch)


def test_an_iterable_dataset_is_told_its_epoch_and_a_resume_skips_what_was_trained():
    stream = Stream()
    loader = DataLoader(stream, batch_size=2)
    batches = make_batches(loader, CPU, batch_size=64, seed=0, drop_last=False)
    assert isinstance(batches, IterableBatches) and batches.steps_per_epoch is None and not batches.exact_resume
    assert order(batches, 2) == [[200, 201], [202, 203], [204]]
    assert stream.epoch == 2 and loader.generator is None  # the loader's own generator is put back
    assert order(batches, 3, start=1) == [[302, 303], [304]]
    bare = make_batches(Stream(), CPU, batch_size=2, seed=0, drop_last=False)
    assert isinstance(bare, IterableBatches) and order(bare, 1) == [[100, 101], [102, 103], [104]]


def test_one_example_and_one_batch_are_enough_and_none_is_a_clear_error():
    assert len(DeviceBatches({"x": torch.arange(1)}, CPU, batch_size=8, seed=0, drop_last=False)) == 1
    assert len(DeviceBatches({"x": torch.arange(5)}, CPU, batch_size=5, seed=0, drop_last=True)) == 1
    with pytest.raises(ConfigError, match="holds no examples"):
        DeviceBatches({"x": torch.arange(0)}, CPU, batch_size=8, seed=0, drop_last=False)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        DeviceBatches({"x": torch.arange(5)}, CPU, batch_size=8, seed=0, drop_last=True)
    with pytest.raises(ConfigError, match="allowed: a tensor"):
        make_batches("not data", CPU, batch_size=8, seed=0, drop_last=False)


def test_a_tensor_dataset_is_batched_on_the_device_as_tuples():
    x, y = torch.arange(10), torch.arange(10) * 2
    batches = make_batches(TensorDataset(x, y), CPU, batch_size=4, seed=0, drop_last=False)
    assert isinstance(batches, DeviceBatches)
    for bx, by in batches.epoch(0):
        assert torch.equal(by, bx * 2)


def test_the_time_spent_waiting_for_batches_is_summed():
    class Slow(Batches):
        def _epoch(self, epoch, start):
            for k in range(start, 3):
                time.sleep(0.02)
                yield k

    slow = Slow()
    assert list(slow.epoch(0)) == [0, 1, 2]
    assert 0.06 <= slow.wait_seconds < 1.0


def test_reading_a_dataset_in_the_main_process_leaves_the_global_random_stream_alone():
    from epochal.data import LoaderBatches

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loaded = LoaderBatches(Items(), CPU, batch_size=8, seed=3, drop_last=False)
    assert sorted(sum(order(loaded, 1), [])) == list(range(20))
    assert torch.equal(torch.rand(3), expected)


class Noisy(torch.utils.data.Dataset):
    """Items drawn from every global generator, as random augmentations are."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        import random

        import numpy as np

        return torch.tensor([float(i), random.random(), float(np.random.rand()), float(torch.rand(()))])


def test_random_transforms_give_the_same_batch_whichever_worker_makes_it():
    from epochal.data import LoaderBatches

    def batches(workers):
        # seed 7: every (seed, epoch, batch) number is above 2**32, which numpy only takes modulo 2**32
        loaded = LoaderBatches(Noisy(), CPU, batch_size=4, seed=7, drop_last=False, workers=workers)
        return [b for b in loaded.epoch(1)]

    one, two = batches(1), batches(2)
    assert len(one) == 4 and all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.equal(a, b) for a, b in zip(one, batches(1)))
    assert len({tuple(b[0, 1:].tolist()) for b in one}) == 4  # each batch has draws of its own


def ranks_loader(world, sampler=None):
    from torch.utils.data import DataLoader, TensorDataset

    from epochal.data import UserLoaderBatches

    data = TensorDataset(torch.arange(8.0))
    loader = DataLoader(data, batch_size=4, sampler=sampler)  # in order: batches [0..3], [4..7]
    return UserLoaderBatches(loader, torch.device("cpu"), seed=0, world=world)


@pytest.mark.parametrize("rank, expected", [(0, [[0.0, 1.0], [4.0, 5.0]]), (1, [[2.0, 3.0], [6.0, 7.0]])])
def test_under_torchrun_each_rank_of_a_dataloader_gets_its_part_of_every_global_batch(rank, expected):
    from epochal.distributed import World

    batches = ranks_loader(World(rank=rank, size=2)).epoch(0)
    assert [batch[0].tolist() for batch in batches] == expected


def test_a_dataloader_s_distributed_sampler_is_refused_under_torchrun_and_accepted_alone():
    from torch.utils.data import DistributedSampler, TensorDataset

    from epochal.distributed import World
    from epochal.errors import ConfigError

    def sampler():
        return DistributedSampler(TensorDataset(torch.arange(8.0)), num_replicas=1, rank=0, shuffle=False)

    with pytest.raises(ConfigError, match="a DataLoader with a DistributedSampler"):
        ranks_loader(World(rank=0, size=2), sampler())
    alone = ranks_loader(World(rank=0, size=1), sampler())  # one process: it is the whole data, in order
    assert [batch[0].tolist() for batch in alone.epoch(0)] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


def test_a_resume_that_skips_shows_its_progress_on_a_terminal(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    class Numbers(IterableDataset):
        def __iter__(self):
            return iter(torch.arange(40).view(20, 2))

    shown = Terminal()
    monkeypatch.setattr("sys.stderr", shown)
    batches = IterableBatches(DataLoader(Numbers(), batch_size=None), torch.device("cpu"), seed=0)
    rest = [b.tolist() for b in batches.epoch(0, start=15)]
    assert rest == [[30, 31], [32, 33], [34, 35], [36, 37], [38, 39]]
    assert "resume: skipping batches already trained on" in shown.getvalue() and "/15 [" in shown.getvalue()
    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    assert len(list(batches.epoch(1))) == 20 and quiet.getvalue() == ""  # nothing to skip: no bar
