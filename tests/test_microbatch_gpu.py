"""train.microbatch = "auto" against a real CUDA out-of-memory error: a loss that asks the allocator for twice
the GPU's memory whenever a micro-batch holds more than 16 examples."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import epochal

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def greedy_loss(model, batch):
    x, y = batch
    if len(x) > 16:  # what a too-large batch does to a real model: an allocation the GPU cannot give
        torch.empty(2 * torch.cuda.get_device_properties(0).total_memory, dtype=torch.uint8, device=x.device)
    return F.mse_loss(model(x), y)


def train(tmp_path, name, settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.3), nn.GELU(), nn.Linear(64, 8))
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    config = {"train": {"device": "cuda", "batch_size": 64, "max_epochs": 2, "progress": False,
                        "deterministic": True, **settings}, "checkpoint": {"every_epochs": 0}}
    result = epochal.fit(model, torch.utils.data.TensorDataset(x, x.cos()), greedy_loss, config=config,
                         out_dir=tmp_path, experiment_id=name, resume="never", log=lambda _: None)
    return result, model


def test_a_real_cuda_out_of_memory_is_retried_in_micro_batches_with_the_same_result(tmp_path):
    held = torch.cuda.memory_allocated()  # earlier tests' caches (compiled graphs' pools) count too
    configured, a = train(tmp_path, "configured", {"grad_accum": 4})
    auto, b = train(tmp_path, "auto", {"microbatch": "auto"})
    assert auto.status == "completed"
    assert auto.result["curves"]["train_loss"] == configured.result["curves"]["train_loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.cuda.memory_allocated() - held < 2**26  # the failed attempts left nothing behind
