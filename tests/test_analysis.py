"""load_checkpoint, save_checkpoint and load_run: trained runs in the user's own scripts."""

import pytest
import torch
from torch import nn

import epochal
from epochal.analysis import load_checkpoint, load_run, save_checkpoint
from epochal.errors import CheckpointError

TINY_REGEX = {"task.pattern": "(a|b)*a(a|b)", "task.max_len": 8, "task.ood_min_len": 9, "task.ood_max_len": 12,
              "task.n_train": 300, "task.n_val": 60, "task.n_test": 100, "task.n_test_ood": 60, "task.d_model": 16,
              "task.n_heads": 2, "task.d_ff": 32, "train.batch_size": 32, "train.max_epochs": 3,
              "train.progress": False, "optim.lr": 0.01}


def test_save_then_load_a_checkpoint_with_its_optimizer_and_checksum(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "mine.pt", model, optimizer, epoch=3, metrics={"acc": 0.5})
    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    meta = load_checkpoint(path, fresh, fresh_opt)
    assert meta["meta"] == {"epoch": 3, "metrics": {"acc": 0.5}}
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path, fresh)


def test_best_pt_of_a_regex_run_reproduces_its_recorded_test_metrics(tmp_path):
    result = epochal.run("regex", overrides=TINY_REGEX, out_dir=tmp_path, experiment_id="r", log=lambda _: None)
    recorded = result.result["test"]["best"]
    loaded = load_run(result.run_dir, weights="best")
    assert loaded.test() == recorded
    meta = load_checkpoint(result.run_dir / "checkpoints" / "best.pt", loaded.model)
    assert meta["epoch"] == result.result["best"]["epoch"]
    last = load_run(result.run_dir, weights="last")
    assert last.test() == result.result["test"]["last"]
