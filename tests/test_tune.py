"""epochal tune batch-size and tune lr, and epochal.tune_lr: no run folder left, weights kept, one-line refusals.
Out of memory on the CPU comes from the fault hook EPOCHAL_TEST_OOM_ABOVE."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import epochal
from epochal.cli import main
from epochal.faults import OOM_ENV


def test_the_largest_batch_that_fits_is_found_and_no_folder_is_left(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(OOM_ENV, "100")
    assert main(["tune", "batch-size", "toy", "--max", "1000", "--set", "task.n_train=512"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "largest batch that fits: 100 (train.batch_size = 100)"
    assert "batch 128: out of memory" in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no results/


def test_the_batch_never_exceeds_max_nor_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "batch-size", "toy", "--max", "48"]) == 0
    assert capsys.readouterr().out.strip().endswith("largest batch that fits: 48 (train.batch_size = 48)")
    assert main(["tune", "batch-size", "toy", "--max", "5000", "--set", "task.n_train=300"]) == 0
    assert "largest batch that fits: 300 " in capsys.readouterr().out


def test_on_a_cpu_the_batch_size_search_needs_a_max(capsys):
    assert main(["tune", "batch-size", "toy"]) == 2
    assert capsys.readouterr().err.strip() == ("epochal: error: tune batch-size: on a CPU nothing runs out of "
                                               "memory (the kernel ends the process instead); allowed: --max N, "
                                               "or a CUDA device")


def test_the_lr_range_test_writes_its_curve_and_suggests_a_rate_inside_the_range(tmp_path, capsys):
    assert main(["tune", "lr", "toy", "--steps", "60", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("suggested learning rate: ")
    written = json.loads((tmp_path / "tune" / "toy-lr.json").read_text())
    assert 1e-7 <= written["suggestion"] <= 10 and len(written["lrs"]) == len(written["losses"]) <= 60
    assert written["lrs"] == sorted(written["lrs"])  # rising exponentially
    assert (tmp_path / "tune" / "toy-lr.png").stat().st_size > 0


def test_tune_lr_on_your_own_model_keeps_its_weights_and_stops_once_the_loss_explodes(tmp_path):
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    test = epochal.tune_lr(model, torch.utils.data.TensorDataset(x, x.sin()),
                           lambda m, b: F.mse_loss(m(b[0]), b[1]), config={"train": {"batch_size": 32}},
                           start=1e-5, end=1e3, steps=200)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(test.lrs) < 200  # a learning rate of 1e3 diverges long before the last step
    assert 1e-5 <= test.suggestion < test.lrs[-1]


@pytest.mark.parametrize("args, message", [(["--start", "1", "--end", "0.1"], "the range 1..0.1 is empty"),
                                           (["--steps", "3"], "3 steps are too few")])
def test_a_bad_range_is_one_line(args, message, capsys):
    assert main(["tune", "lr", "toy", *args]) == 2
    assert message in capsys.readouterr().err
