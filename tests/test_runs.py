"""epochal runs (index, filter, sort, formats) and epochal compare, on single run folders."""

import csv
import io
import json
import os

import pytest

from epochal.cli import main


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def three_runs(run_toy, tmp_path):
    """Two learning rates, one of them with two seeds; a gate on eval_mse that only some pass."""
    gate = {"gate.below": {"eval_mse": 0.3}, "gate.stop": False}
    for name, lr, seed in (("fast", 3e-2, 0), ("fast-seed1", 3e-2, 1), ("slow", 1e-5, 0)):
        run_toy(name, settings={"optim.lr": lr, "train.seed": seed, **gate})
    return {name: json.loads((tmp_path / name / "result.json").read_text()) for name in ("fast", "fast-seed1", "slow")}


def test_runs_table_shows_what_differs_and_the_metrics(three_runs, tmp_path, capsys):
    code, out, _ = cli(capsys, "runs", tmp_path, "--format", "json")
    rows = {os.path.basename(r["run"]): r for r in json.loads(out)}
    assert code == 0 and rows.keys() == three_runs.keys()
    for name, res in three_runs.items():
        row = rows[name]
        passed = res["metadata"]["gate_passed"]
        assert row["status"] == res["status"] == ("completed" if passed else "gate_failed") and row["task"] == "toy"
        assert row["eval_mse"] == res["metrics"]["eval_mse"]
        assert row["train_loss"] == res["curves"]["train_loss"][-1]
        assert row["best_eval_mse"] == res["best"]["value"]
        assert row["gate_passed"] == res["metadata"]["gate_passed"]
    # The settings that differ between the listed runs, and no others.
    assert {"optim.lr", "train.seed"} <= rows["fast"].keys()
    assert not {"task.n_train", "train.max_epochs", "experiment_id"} & rows["fast"].keys()
    assert rows["slow"]["gate_passed"] is False and "gate not passed" in rows["slow"]["failure_reason"]


def test_where_and_sort(three_runs, tmp_path, capsys):
    def names(*args):
        code, out, _ = cli(capsys, "runs", tmp_path, "--format", "json", *args)
        assert code == 0
        return [os.path.basename(r["run"]) for r in json.loads(out)]

    passed = sorted(n for n, r in three_runs.items() if r["metadata"]["gate_passed"])
    assert passed and sorted(names("--where", "gate_passed=true")) == passed
    assert names("--where", "optim.lr=1e-05") == ["slow"]
    assert sorted(names("--where", "optim.lr!=1e-05")) == ["fast", "fast-seed1"]
    assert names("--where", "optim.lr=0.03", "--where", "train.seed=1") == ["fast-seed1"]
    threshold = three_runs["slow"]["metrics"]["eval_mse"]
    assert "slow" not in names("--where", f"eval_mse<{threshold}")
    by_mse = sorted(three_runs, key=lambda n: three_runs[n]["metrics"]["eval_mse"])
    assert names("--sort", "eval_mse") == by_mse
    assert names("--sort=-eval_mse") == names("--sort", "eval_mse", "--desc") == by_mse[::-1]


def test_table_and_csv_formats(three_runs, tmp_path, capsys):
    code, out, _ = cli(capsys, "runs", tmp_path, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3 and {"run", "status", "optim.lr", "eval_mse"} <= rows[0].keys()
    assert {r["gate_passed"] for r in rows} == {"true", "false"}
    code, out, _ = cli(capsys, "runs", tmp_path)
    header, *lines = out.strip().splitlines()
    assert header.split()[:5] == ["run", "task", "status", "gate_passed", "failure_reason"] and len(lines) == 3


def test_bad_where_and_missing_path_are_one_line(three_runs, tmp_path, capsys):
    code, _, err = cli(capsys, "runs", tmp_path, "--where", "optim.lrr=1")
    assert code == 2 and err.count("\n") == 1 and "--where optim.lrr: no run has it" in err
    code, _, err = cli(capsys, "runs", tmp_path, "--where", "optim.lr")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = cli(capsys, "runs", tmp_path / "nowhere")
    assert code == 1 and "no such folder" in err


def test_a_run_killed_without_a_final_result_is_interrupted(three_runs, tmp_path, capsys):
    folder = tmp_path / "fast"
    res = three_runs["fast"]
    res["status"] = "running"
    (folder / "result.json").write_text(json.dumps(res))
    (folder / ".lock").write_text("999999999")  # a pid no process has
    code, out, _ = cli(capsys, "runs", folder, "--format", "json")
    assert json.loads(out)[0]["status"] == "interrupted"


def test_passed_keeps_only_runs_that_passed_their_gate_and_json_carries_the_status(three_runs, tmp_path, capsys):
    code, out, _ = cli(capsys, "runs", tmp_path, "--format", "json", "--passed")
    kept = sorted(os.path.basename(r["run"]) for r in json.loads(out))
    assert code == 0 and kept == sorted(n for n, r in three_runs.items() if r["metadata"]["gate_passed"])
    assert "slow" not in kept and three_runs["slow"]["status"] == "gate_failed"
    code, out, _ = cli(capsys, "runs", tmp_path)
    assert code == 0 and next(line for line in out.splitlines() if line.startswith(str(tmp_path / "slow"))).split()[2] == "gate_failed"


def test_a_folder_written_before_gate_failed_existed_is_read_as_gate_failed(three_runs, tmp_path, capsys):
    folder = tmp_path / "slow"
    old = {**three_runs["slow"], "status": "completed"}  # what epochal wrote before: only gate_passed told
    (folder / "result.json").write_text(json.dumps(old))
    code, out, _ = cli(capsys, "runs", folder, "--format", "json")
    assert code == 0 and json.loads(out)[0]["status"] == "gate_failed"
    code, out, _ = cli(capsys, "show", folder)
    assert "status gate_failed" in out


def test_compare_lists_gate_failed_runs_apart_unless_included(three_runs, tmp_path, capsys):
    code, out, _ = cli(capsys, "compare", tmp_path / "fast", tmp_path / "fast-seed1", tmp_path / "slow")
    lines = out.splitlines()
    assert code == 0 and lines[:2] == [f"A = {tmp_path / 'fast'}", f"B = {tmp_path / 'fast-seed1'}"]
    assert lines[2].startswith(f"left out (gate_failed; --include-failed compares them): {tmp_path / 'slow'}: "
                               "gate not passed")
    assert not any(line.strip().startswith("train_loss C vs A") for line in lines)
    code, _, err = cli(capsys, "compare", tmp_path / "fast", tmp_path / "slow")
    assert code == 2 and err.count("\n") == 1 and "1 are gate_failed" in err and "--include-failed" in err


def test_compare_settings_metrics_and_where_curves_diverge(three_runs, tmp_path, capsys):
    code, out, _ = cli(capsys, "compare", tmp_path / "fast", tmp_path / "fast-seed1", tmp_path / "slow",
                       "--include-failed")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"A = {tmp_path / 'fast'}"
    row = next(line.split() for line in lines if line.strip().startswith("optim.lr"))
    assert row == ["optim.lr", "0.03", "0.03", "1e-05"]
    mse = next(line.split() for line in lines if line.strip().startswith("eval_mse"))
    assert mse[1:] == [f"{three_runs[n]['metrics']['eval_mse']:.4g}" for n in ("fast", "fast-seed1", "slow")]
    a, c = (three_runs[n]["curves"]["train_loss"] for n in ("fast", "slow"))
    first = next(i for i, (x, y) in enumerate(zip(a, c)) if x != y)
    assert any(line.strip().startswith(f"train_loss C vs A: first differ at step {first + 1}:") for line in lines)


def test_compare_of_identical_runs_says_so(run_toy, tmp_path, capsys):
    run_toy("a")
    run_toy("b")
    code, out, _ = cli(capsys, "compare", tmp_path / "a", tmp_path / "b")
    steps = len(json.loads((tmp_path / "a" / "result.json").read_text())["curves"]["train_loss"])
    assert code == 0 and "settings: identical" in out
    assert f"train_loss B vs A: identical over the {steps} shared steps" in out


def test_compare_tolerance_and_bad_input(three_runs, tmp_path, capsys):
    exact = cli(capsys, "compare", tmp_path / "fast", tmp_path / "fast-seed1")[1]
    loose = cli(capsys, "compare", tmp_path / "fast", tmp_path / "fast-seed1", "--rtol", "100")[1]
    assert "train_loss B vs A: first differ" in exact and "train_loss B vs A: identical" in loose
    code, _, err = cli(capsys, "compare", tmp_path / "fast")
    assert code == 2 and "two or more run folders" in err
    code, _, err = cli(capsys, "compare", tmp_path / "fast", tmp_path)
    assert code == 1 and "not a run folder" in err
