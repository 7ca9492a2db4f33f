"""Input overlap on a GPU: batches read through a DataLoader are copied on a side stream (data.DeviceCopy)
while the step before them runs; a run fed that way trains on exactly what device tensors give it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import epochal
from epochal.data import LoaderBatches
from tests.test_resume import SignalAtStep

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


class Examples(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=generator)
    return x, torch.tanh(x @ torch.randn(32, 8, generator=generator))


def loss_fn(model, batch):
    return F.mse_loss(model(batch["x"]), batch["y"])


def train(tmp_path, name, train_data, callbacks=(), resume="never", workers=0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 8))
    config = {"train": {"device": "cuda", "max_epochs": 3, "batch_size": 32, "num_workers": workers,
                        "deterministic": True, "progress": False}, "checkpoint": {"every_epochs": 0}}
    result = epochal.fit(model, train_data, loss_fn, config=config, out_dir=tmp_path, experiment_id=name,
                         resume=resume, callbacks=list(callbacks), log=lambda _: None)
    return result, model


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_copied_on_a_side_stream_train_as_device_tensors_do(tmp_path, workers):
    x, y = data()
    on_device, model_a = train(tmp_path, "tensors", {"x": x, "y": y})
    loaded, model_b = train(tmp_path, f"loaded-{workers}", Examples(x, y), workers=workers)
    assert loaded.result["curves"]["train_loss"] == on_device.result["curves"]["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))


def test_a_loaded_run_killed_and_resumed_equals_the_uninterrupted_one(tmp_path):
    x, y = data()
    straight, model_a = train(tmp_path, "straight", Examples(x, y))
    stopped, _ = train(tmp_path, "stopped", Examples(x, y), callbacks=[SignalAtStep(21)])
    assert stopped.status == "preempted"
    resumed, model_b = train(tmp_path, "stopped", Examples(x, y), resume="must")
    assert resumed.result["curves"]["train_loss"] == straight.result["curves"]["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))


def test_the_copy_overlaps_on_its_own_stream_and_the_batch_is_on_the_gpu():
    x, y = data()
    batches = LoaderBatches(Examples(x, y), CUDA, batch_size=64, seed=0, drop_last=False)
    assert batches.copy.stream is not None and batches.copy.stream != torch.cuda.current_stream()
    first = next(iter(batches.epoch(0)))
    assert first["x"].is_cuda and first["x"].shape == (64, 32)
