"""train.microbatch = "auto": a step that runs out of memory is retried on the same batch in more micro-batches,
with the same gradient and the same random numbers, and keeps that split. On the CPU through the fault hook
EPOCHAL_TEST_OOM_ABOVE (a micro-batch of more examples raises torch's OutOfMemoryError after its forward pass)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import epochal
from epochal.errors import ConfigError, EpochalError
from epochal.faults import OOM_ENV
from tests.test_resume import SignalAtStep, assert_identical, final_tensors

# dropout: the random numbers a failed attempt drew must be drawn again, identically
SETTINGS = {"task.dropout": 0.2, "ema.enabled": True, "ema.decay": 0.9, "train.max_epochs": 2, "task.n_train": 256}
AUTO = {**SETTINGS, "train.microbatch": "auto"}


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_a_step_out_of_memory_ends_as_if_the_split_had_been_configured(run_toy, monkeypatch):
    configured = run_toy("configured", settings={**SETTINGS, "train.grad_accum": 4})  # 4 micro-batches of 16
    monkeypatch.setenv(OOM_ENV, "20")  # 64 and 32 examples do not fit, 16 do
    auto = run_toy("auto", settings=AUTO)
    assert auto.status == "completed"
    assert_identical(configured, auto)
    events = [line for line in history(auto.run_dir) if line.get("event") == "microbatch"]
    assert [(e["step"], e["micro_batches"]) for e in events] == [(1, 2), (1, 4)]  # found once, then kept
    assert "ran out of memory" in events[0]["reason"]


def test_a_resumed_run_keeps_the_split_it_found(run_toy, monkeypatch):
    monkeypatch.setenv(OOM_ENV, "20")
    straight = run_toy("straight", settings=AUTO)
    run_toy("stopped", settings=AUTO, callbacks=[SignalAtStep(5)])
    resumed = run_toy("stopped", settings=AUTO, resume="must")
    assert_identical(straight, resumed)
    splits_found = [line for line in history(resumed.run_dir) if line.get("event") == "microbatch"]
    assert [e["step"] for e in splits_found] == [1, 1]  # none again after the resume: the checkpoint had it


def pair_loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).sum(), torch.tensor(y.numel())  # a (sum, count) loss


@pytest.mark.parametrize("loss_fn", [pair_loss, lambda model, batch: F.mse_loss(model(batch[0]), batch[1])],
                         ids=["sum-count", "mean"])
def test_a_users_model_gets_the_whole_batchs_gradient_for_either_loss(tmp_path, monkeypatch, loss_fn):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(192, 8, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sin())

    def train(name, config):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.3), nn.GELU(), nn.Linear(32, 8))
        base = {"train": {"batch_size": 48, "max_epochs": 2, "progress": False}, "checkpoint": {"every_epochs": 0}}
        for section, values in config.items():
            base[section].update(values)
        epochal.fit(model, data, loss_fn, config=base, out_dir=tmp_path, experiment_id=name, resume="never",
                    log=lambda _: None)
        return model

    configured = train("configured", {"train": {"grad_accum": 4}})  # micro-batches of 12
    monkeypatch.setenv(OOM_ENV, "12")
    auto = train("auto", {"train": {"microbatch": "auto"}})
    assert all(torch.equal(a, b) for a, b in zip(configured.state_dict().values(), auto.state_dict().values()))


def test_with_accumulation_each_chunk_is_split_further(run_toy, monkeypatch):
    configured = run_toy("configured", settings={**SETTINGS, "train.grad_accum": 8})
    monkeypatch.setenv(OOM_ENV, "10")  # grad_accum 2: chunks of 32, split into 4 micro-batches of 8
    auto = run_toy("auto", settings={**AUTO, "train.grad_accum": 2})
    assert auto.result["steps"] == configured.result["steps"]
    assert_identical(configured, auto)


def test_one_example_that_does_not_fit_stops_in_one_line_and_keeps_the_last_checkpoint(run_toy, tmp_path,
                                                                                     monkeypatch):
    run_toy("r", settings={**AUTO, "train.max_epochs": 1})
    before = final_tensors(tmp_path / "r")
    monkeypatch.setenv(OOM_ENV, "0")
    with pytest.raises(EpochalError) as failed:
        run_toy("r", settings={**AUTO, "train.max_epochs": 2}, resume="must", force=True)
    message = str(failed.value)
    assert message.startswith("train.microbatch: step 5 runs out of memory even in micro-batches of one example")
    assert "the last checkpoint is kept" in message and "\n" not in message
    after = final_tensors(tmp_path / "r")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_auto_running_out_of_memory_is_one_line_naming_the_setting(run_toy, monkeypatch):
    monkeypatch.setenv(OOM_ENV, "20")
    with pytest.raises(EpochalError, match=r'^step 1 ran out of memory \(OutOfMemoryError: .*\); allowed: '
                                           r'train.microbatch = "auto"'):
        run_toy(settings=SETTINGS)


def test_auto_is_refused_with_cuda_graphs_and_by_the_numpy_trainer(run_toy, tmp_path):
    with pytest.raises(ConfigError, match="a captured step has fixed micro-batches"):
        run_toy(settings={"train.microbatch": "auto", "train.cuda_graphs": True})
    with pytest.raises(ConfigError, match="^train.microbatch: .*the NumPy trainer runs on the CPU"):
        epochal.run("scratch-mlp", overrides={"train.microbatch": "auto"}, out_dir=tmp_path, log=lambda _: None)
