"""epochal.load_runs, the runs index cache (index_cache.py), `epochal runs --columns` and `epochal diff`."""

import json
import os

import pytest

import epochal
import epochal.runs
from epochal.analysis import GateFailedWarning
from epochal.cli import main
from epochal.index_cache import cache_path


def make_runs(root, count, status="completed"):
    """``count`` small run folders (config.toml and result.json), as epochal writes them, in nested groups."""
    for i in range(count):
        folder = root / f"group{i % 10}" / f"run{i:04d}"
        folder.mkdir(parents=True)
        folder.joinpath("config.toml").write_text(
            f'experiment_id = "run{i:04d}"\n[task]\nname = "toy"\n[optim]\nlr = {0.001 * (i + 1)}\n'
            f'[train]\nseed = {i % 3}\n')
        folder.joinpath("result.json").write_text(json.dumps({
            "task": "toy", "status": status, "epochs": 3, "steps": 12, "metrics": {"eval_mse": 1.0 / (i + 1)},
            "curves": {"train_loss": [0.5] * 12}, "test": {"last": {"test_mse": 2.0 / (i + 1)}},
            "metadata": {"stop_reason": "max_epochs reached", "train_seconds": 1.5}}))
    return root


def counting(monkeypatch):
    reads = []
    real = epochal.runs._index_record
    monkeypatch.setattr(epochal.runs, "_index_record", lambda folder: reads.append(folder) or real(folder))
    return reads


def test_load_runs_is_one_row_a_run_with_settings_metrics_and_tests(tmp_path):
    frame = epochal.load_runs(make_runs(tmp_path, 20))
    assert len(frame) == 20 and frame["status"].eq("completed").all()
    row = frame.set_index("id").loc["run0003"]
    assert row["optim.lr"] == pytest.approx(0.004) and row["train.seed"] == 0
    assert row["eval_mse"] == pytest.approx(0.25) and row["test/last/test_mse"] == pytest.approx(0.5)
    assert row["seconds"] == 1.5 and row["task"] == "toy"


def test_a_second_call_reads_no_folder_and_a_changed_folder_is_read_again(tmp_path, monkeypatch):
    root = make_runs(tmp_path / "results", 1000)
    reads = counting(monkeypatch)
    first = epochal.load_runs(root)
    assert len(reads) == 1000 and cache_path().is_file() and str(tmp_path) not in str(cache_path())
    reads.clear()
    again = epochal.load_runs(root)
    assert reads == [] and again.equals(first)
    changed = root / "group3" / "run0013" / "result.json"
    data = json.loads(changed.read_text())
    data["metrics"]["eval_mse"] = 123.0
    changed.write_text(json.dumps(data))
    os.utime(changed, ns=(1, 1))  # even with an old modification time: the size changed
    third = epochal.load_runs(root)
    assert [p.name for p in reads] == ["run0013"]
    assert third.set_index("id").loc["run0013", "eval_mse"] == 123.0


def test_a_damaged_cache_is_rebuilt_never_trusted(tmp_path, monkeypatch):
    root = make_runs(tmp_path / "results", 30)
    expected = epochal.load_runs(root)
    cache_path().write_text('{"version": 1, "runs": {"')  # cut short
    reads = counting(monkeypatch)
    assert epochal.load_runs(root).equals(expected) and len(reads) == 30


def test_a_damaged_run_folder_is_listed_as_damaged_and_the_others_load(tmp_path):
    root = make_runs(tmp_path, 5)
    (root / "group2" / "run0002" / "config.toml").write_text("this is [not toml")
    frame = epochal.load_runs(root).set_index("id")
    assert frame.loc["run0002", "status"] == "damaged" and "config.toml" in frame.loc["run0002", "failure_reason"]
    assert (frame.drop("run0002")["status"] == "completed").all()


def test_gate_failed_runs_are_left_out_with_a_warning_unless_asked(tmp_path):
    make_runs(tmp_path / "passed", 3)
    make_runs(tmp_path / "failed", 2, status="gate_failed")
    with pytest.warns(GateFailedWarning, match="left out 2 gate-failed run"):
        assert len(epochal.load_runs(tmp_path)) == 3
    assert len(epochal.load_runs(tmp_path, include_failed=True)) == 5


def test_runs_columns_and_a_misspelt_key_name_the_close_ones(tmp_path, capsys):
    root = make_runs(tmp_path, 3)
    assert main(["runs", str(root), "--columns", "optim.lr,eval_mse", "--format", "csv", "--sort", "optim.lr"]) == 0
    assert capsys.readouterr().out.splitlines() == ["optim.lr,eval_mse", "0.001,1.0", "0.002,0.5", "0.003,0.3333333333333333"]
    assert main(["runs", str(root), "--where", "optim.lrr<0.01"]) == 2
    assert "--where optim.lrr: no run has it; allowed, for example: optim.lr" in capsys.readouterr().err
    assert main(["runs", str(root), "--columns", "eval_mse2"]) == 2
    assert "--columns eval_mse2: no run has it; allowed, for example: eval_mse" in capsys.readouterr().err


def test_diff_shows_only_what_differs(run_toy, tmp_path, capsys):
    run_toy("a", settings={"train.max_epochs": 2})
    run_toy("b", settings={"train.max_epochs": 2, "optim.lr": 0.01})
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "optim.lr  0.003  0.01" in out and "train.max_epochs" not in out
    assert "B - A" in out and "loss curves: part at step " in out
    assert "environment" not in out  # same machine, same code
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert "identical: settings, environment, results and the 8-step loss curve" in capsys.readouterr().out
    assert main(["diff", str(tmp_path / "a"), str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"epochal: error: {tmp_path}: not a run folder (no config.toml); " \
                                              "allowed: a folder made by epochal run"
