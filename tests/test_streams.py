"""Streams with state: a resume loads the data's position instead of skipping to it, bit-identically."""

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import epochal
from epochal.checkpoint import CheckpointStore
from epochal.errors import CheckpointError, ConfigError

from test_resume import SignalAtStep

N = 40  # examples a pass: 5 batches of 8, so a 12-step run crosses two epoch ends
STEPS = 12


def example(i: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.sin(torch.arange(4.0) * (i + 1) + epoch)
    return x, x.sum(0, keepdim=True)


class Shards(IterableDataset):
    """A stateful stream that shards itself over workers (worker w reads examples w, w+W, ...) and counts how
    many examples of its share it has handed out: its whole state. ``reads`` counts examples read in this
    process, to tell a resume that loads the position from one that reads its way to it."""

    def __init__(self, n: int = N):
        self.n, self.epoch, self.next, self.start, self.reads = n, 0, 0, 0, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def state_dict(self):
        return {"next": self.next}

    def load_state_dict(self, state):
        self.start = state["next"]

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = range(worker, self.n, workers)
        start, self.start = self.start, 0  # a loaded position is for this pass only
        for k in range(start, len(mine)):
            self.next, self.reads = k + 1, self.reads + 1
            yield example(mine[k], self.epoch)


class Plain(IterableDataset):
    """The same examples, without state: a resume reads and skips what was trained."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return (example(i, self.epoch) for i in range(N))


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def train(tmp_path, run_id, data, settings=None, **extra):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Tanh(), nn.Linear(8, 1))
    config = {"train": {"max_steps": STEPS, "batch_size": 8, "progress": False, "log_every": 2},
              "log": {"plots": False}, **(settings or {})}
    return epochal.fit(model, data, loss_fn, config=config, out_dir=tmp_path, experiment_id=run_id,
                       log=extra.pop("log", lambda _: None), **extra)


def weights(result):
    return CheckpointStore(result.run_dir / "checkpoints", 3).load_states("last.pt")["model"]


def assert_identical(a, b):
    assert a.status == b.status == "completed" and a.result["steps"] == b.result["steps"] == STEPS
    assert a.result["curves"] == b.result["curves"]
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stateful_stream_killed_mid_epoch_resumes_bit_identically_without_reading_back(tmp_path, workers):
    data = lambda: DataLoader(Shards(), batch_size=8, num_workers=workers)  # noqa: E731
    straight = train(tmp_path, "straight", data())
    stopped = train(tmp_path, "stopped", data(), callbacks=[SignalAtStep(7)])  # batch 2 of epoch 2
    assert stopped.status == "preempted" and stopped.result["steps"] == 7
    lines = []
    resumed_data = data()
    resumed = train(tmp_path, "stopped", resumed_data, resume="must", log=lines.append)
    assert_identical(straight, resumed)
    assert not any("skipping" in line for line in lines), lines
    collecting = time.perf_counter()
    gc.collect()  # runs' loaders are garbage now: their workers went when their pass ended, not here (5 s each)
    assert time.perf_counter() - collecting < 3
    if workers == 0:  # the resumed pass read from example 16 of epoch 2 on: nothing before it again
        # the rest of epoch 2, then 3 batches of epoch 3 (the third is fetched as the step budget ends)
        assert resumed_data.dataset.reads == (N - 16) + 3 * 8


def test_the_state_saved_is_the_last_trained_batchs_not_the_last_fetched(tmp_path):
    """A 7-step budget fetches an eighth batch it never trains: the final checkpoint holds batch 2 of epoch 2."""
    result = train(tmp_path, "r", DataLoader(Shards(), batch_size=8), {"train": {
        "max_steps": 7, "batch_size": 8, "progress": False}})
    data = CheckpointStore(result.run_dir / "checkpoints", 3).load_states("last.pt")["data"]
    assert (data["epoch"], data["position"], data["dataset"], data["keys"]) == (1, 2, "Shards", ["next"])
    assert data["stream"]["dataset_state"]["next"] == 16


def test_checkpoints_every_steps_and_every_minutes_work_with_a_stream(tmp_path):
    for key, value, step in (("every_steps", 3, 3), ("every_minutes", 1e-9, 7)):  # every_minutes: each step
        settings = {"checkpoint": {key: value, "async_write": False, "keep_last": 50}}
        result = train(tmp_path, key, DataLoader(Shards(), batch_size=8), settings)
        store = CheckpointStore(result.run_dir / "checkpoints", 50)
        data = store.load_states(f"checkpoint_step_{step:08d}.pt")["data"]
        epoch, position = divmod(step, 5)  # 5 batches a pass
        assert (data["epoch"], data["position"]) == (epoch, position)
        assert data["stream"]["dataset_state"]["next"] == 8 * position


def test_torchdata_is_imported_for_a_stateful_stream_only():
    """Importing torchdata brings its own samplers: data without state must run as it did without it."""
    code = """
import sys, torch
from torch.utils.data import DataLoader, TensorDataset
from epochal.data import make_batches
from test_streams import Plain, Shards
cpu = torch.device("cpu")
for data in (TensorDataset(torch.arange(8)), DataLoader(TensorDataset(torch.arange(8)), shuffle=True), Plain()):
    make_batches(data, cpu, batch_size=4, seed=0, drop_last=False)
before = "torchdata" in sys.modules
make_batches(Shards(), cpu, batch_size=4, seed=0, drop_last=False)
print(before, "torchdata" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.split() == ["False", "True"]


class Table(torch.utils.data.Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return example(i, 0)


def test_a_map_style_stateful_dataloader_keeps_its_exact_resume(tmp_path):
    """Its shuffle=True sampler makes a generator of its own from the global stream: the checkpoint keeps
    that generator's state as the epoch began, so a resumed epoch draws the order it drew before."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def data(seed):
        torch.manual_seed(seed)
        return StatefulDataLoader(Table(), batch_size=8, shuffle=True)

    straight = train(tmp_path, "straight", data(5))
    train(tmp_path, "stopped", data(5), callbacks=[SignalAtStep(7)])
    assert_identical(straight, train(tmp_path, "stopped", data(6), resume="must"))  # 6: another generator


def test_a_stream_without_state_skips_and_the_resume_says_how_many_why_and_how_to_avoid_it(tmp_path):
    straight = train(tmp_path, "straight", DataLoader(Plain(), batch_size=8))
    train(tmp_path, "stopped", DataLoader(Plain(), batch_size=8), callbacks=[SignalAtStep(7)])
    lines = []
    assert_identical(straight, train(tmp_path, "stopped", DataLoader(Plain(), batch_size=8), resume="must",
                                     log=lines.append))
    said = [line for line in lines if "skipping" in line]
    assert len(said) == 1 and "\n" not in said[0]
    assert "epoch 2 resumes by skipping the 2 batches" in said[0]
    assert "Plain has no state_dict" in said[0] and "StatefulDataLoader" in said[0]


class Unsaveable(Shards):
    def state_dict(self):
        import numpy as np

        return {"next": self.next, "order": {"rows": [np.arange(3)]}}


def test_a_state_a_checkpoint_cannot_hold_is_refused_before_training_naming_the_dataset_and_entry(tmp_path):
    with pytest.raises(ConfigError) as refused:
        train(tmp_path, "r", DataLoader(Unsaveable(), batch_size=8))
    message = str(refused.value)
    assert "\n" not in message and "Unsaveable.state_dict()['order']['rows'][0] is a numpy.ndarray" in message
    assert "allowed: tensors, numbers, strings, lists or dicts" in message
    assert not (tmp_path / "r").exists()  # refused before the run folder was kept, nothing trained


class Renamed(Shards):
    pass


class OtherKeys(Shards):
    def state_dict(self):
        return {"offset": self.next}


@pytest.mark.parametrize("other", [Renamed, OtherKeys, Plain])
def test_a_checkpoint_of_another_datasets_state_refuses_the_resume_in_one_line(tmp_path, other):
    train(tmp_path, "r", DataLoader(Shards(), batch_size=8), callbacks=[SignalAtStep(3)])
    history = (tmp_path / "r" / "history.jsonl").read_text()
    with pytest.raises(CheckpointError) as refused:
        train(tmp_path, "r", DataLoader(other(), batch_size=8), resume="must")
    message = str(refused.value)
    assert "\n" not in message and "the checkpoint holds the state of dataset Shards" in message
    assert other.__name__ in message
    assert (tmp_path / "r" / "history.jsonl").read_text() == history  # nothing trained


# --- Hugging Face datasets, streamed from local shards (never a hub) ---------------------------------

def write_shards(folder: Path, kind: str, shards: int = 4) -> list[str]:
    """N examples in ``shards`` files: as many shards as 2 workers need to take 2 each."""
    rows = [{"x": example(i, 0)[0].tolist(), "y": example(i, 0)[1].tolist()} for i in range(N)]
    per = N // shards
    paths = []
    for s in range(shards):
        part = rows[s * per : (s + 1) * per]
        path = folder / f"shard{s}.{kind}"
        if kind == "jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in part))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(part), path)
        paths.append(str(path))
    return paths


def dict_loss(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


@pytest.mark.parametrize("kind, workers", [("jsonl", 0), ("parquet", 2)])
def test_a_hugging_face_stream_from_local_shards_resumes_bit_identically(tmp_path, monkeypatch, kind, workers):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    files = write_shards(tmp_path, kind)
    builder = "json" if kind == "jsonl" else "parquet"

    def stream():
        return datasets.load_dataset(builder, data_files=files, split="train", streaming=True,
                                     cache_dir=str(tmp_path / "cache")).with_format("torch")

    def go(run_id, **extra):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        config = {"train": {"max_steps": STEPS, "batch_size": 8, "num_workers": workers, "progress": False},
                  "log": {"plots": False}}
        return epochal.fit(model, stream(), dict_loss, config=config, out_dir=tmp_path, experiment_id=run_id,
                           log=lambda _: None, **extra)

    straight = go("straight")
    go("stopped", callbacks=[SignalAtStep(7)])
    resumed = go("stopped", resume="must")
    assert_identical(straight, resumed)
    saved = CheckpointStore(resumed.run_dir / "checkpoints", 3).load_states("checkpoint_step_00000007.pt")["data"]
    assert saved["dataset"] == "IterableDataset" and saved["keys"] == ["epoch", "examples_iterable"]


def batches_of(stream, epoch, start=0):
    return [x.tolist() for x, _ in stream.epoch(epoch, start)]


def test_a_checkpoint_without_stream_state_skips_and_another_worker_count_is_refused():
    from epochal.streams import StreamBatches

    cpu = torch.device("cpu")
    fresh = StreamBatches(Shards(), cpu, batch_size=8, seed=0)
    whole = batches_of(fresh, 1)
    older = StreamBatches(Shards(), cpu, batch_size=8, seed=0)
    older.load_state_dict({})  # written before the dataset had state: the resume reads and skips
    assert not older.exact_resume and "no state of Shards" in older.skip_reason
    assert batches_of(older, 1, start=2) == whole[2:]
    two = StreamBatches(DataLoader(Shards(), batch_size=8, num_workers=2), cpu, batch_size=8, seed=0)
    with pytest.raises(CheckpointError, match="read by 0 workers, this run's by 2"):
        two.load_state_dict(fresh.state_dict())
    loaded = StreamBatches(Shards(), cpu, batch_size=8, seed=0)
    fresh.follow(lambda: (1, 3))
    loaded.load_state_dict(fresh.state_dict())
    assert loaded.exact_resume and loaded.state_dict()["stream"] == fresh.state_dict()["stream"]  # saved again
    assert batches_of(loaded, 1, start=3) == whole[3:]


def test_a_stateful_dataloader_over_a_dataset_without_state_resumes_exactly_and_says_it_reads_its_way():
    from torchdata.stateful_dataloader import StatefulDataLoader

    from epochal.data import make_batches
    from epochal.streams import StreamBatches

    cpu = torch.device("cpu")
    running = make_batches(StatefulDataLoader(Plain(), batch_size=8), cpu, batch_size=8, seed=0, drop_last=False)
    assert isinstance(running, StreamBatches) and not running.exact_resume
    assert "Plain has no state_dict, so the StatefulDataLoader reads its way" in running.skip_reason
    whole = batches_of(running, 1)
    running.follow(lambda: (1, 2))
    resumed = make_batches(StatefulDataLoader(Plain(), batch_size=8), cpu, batch_size=8, seed=0, drop_last=False)
    resumed.load_state_dict(running.state_dict())
    assert batches_of(resumed, 1, start=2) == whole[2:]


def test_a_rollback_reloads_the_streams_position_and_trains_the_same_batches_again(tmp_path):
    seen = []

    def poisoned(model, batch):
        seen.append(round(float(batch[0][0, 0]), 6))  # the batch's first example names it
        loss = loss_fn(model, batch)
        return loss * float("nan") if len(seen) == 9 else loss  # step 9, once

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    config = {"train": {"max_steps": STEPS, "batch_size": 8, "progress": False, "log_every": 1,
                        "nan_policy": "rollback"}, "checkpoint": {"every_steps": 3, "async_write": False},
              "log": {"plots": False}}
    result = epochal.fit(model, DataLoader(Shards(), batch_size=8), poisoned, config=config, out_dir=tmp_path,
                         experiment_id="r", log=lambda _: None)
    assert result.status == "completed" and result.result["steps"] == STEPS
    assert seen[9:12] == seen[6:9]  # rolled back to the step-6 checkpoint: batches 7, 8, 9 again
    assert seen[:5] != seen[5:10]  # and the batches differ from pass to pass (each epoch's examples differ)
