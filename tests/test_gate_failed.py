"""A gate failure is a failure everywhere (seed 001): result.json, the CLI's exit code and last line,
resume, the loading API, the run report and the trackers' status mappings."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import epochal
from epochal.cli import main
from epochal.loggers.mlflow import END_STATUS
from epochal.loggers.wandb import exit_code as wandb_exit_code
from epochal.status import GATE_FAILED_EXIT_CODE, status_of

SRC = str(Path(__file__).resolve().parents[1] / "src")
# A toy run with a gate no 2-epoch run can pass (any task's [gate] is the same generic gate).
ARGS = ["run", "toy", "--epochs", "2", "--no-progress", "--set", "task.n_train=128", "--set", "task.n_eval=64",
        "--set", "log.plots=false", "--set", "gate.below={eval_mse=1e-9}"]


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """The CLI in a subprocess, as a script would call it: (exit code, stdout lines, run folder)."""
    out = tmp_path_factory.mktemp("gate")
    done = subprocess.run([sys.executable, "-m", "epochal", *ARGS, "--out", str(out), "--id", "g"],
                          capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
                          timeout=300)
    return done.returncode, done.stdout.strip().splitlines(), out / "g"


def test_result_json_says_gate_failed_and_keeps_the_seed_fields(failed_run):
    _, _, folder = failed_run
    result = json.loads((folder / "result.json").read_text())
    meta = result["metadata"]
    assert result["status"] == "gate_failed" and meta["gate_passed"] is False
    assert meta["failure_reason"] == "gate not passed (eval_mse < 1e-09) by the end of training"
    assert meta["final_eval_mse"] == result["metrics"]["eval_mse"]
    assert meta["stop_reason"] == "max_epochs reached"  # it trained to the end: not a crash
    assert (folder / "checkpoints" / "model.safetensors").exists() and "last" in result["test"]


def test_the_cli_exits_with_its_own_code_and_its_last_line_says_so(failed_run):
    code, lines, folder = failed_run
    assert code == GATE_FAILED_EXIT_CODE == 3
    assert lines[-2] == f"run folder: {folder}"
    assert lines[-1].startswith("gate_failed: gate not passed (eval_mse < 1e-09) by the end of training; last: "
                                "eval_mse ") and lines[-1].endswith("(exit code 3)")


def test_resume_of_a_gate_failed_run_says_it_already_finished(failed_run, capsys):
    _, _, folder = failed_run
    before = (folder / "result.json").read_text()
    assert main(["resume", str(folder), "--no-progress"]) == 3
    out = capsys.readouterr().out
    assert f"{folder}: already gate_failed (max_epochs reached); nothing to do" in out
    assert (folder / "result.json").read_text() == before  # nothing retrained or retested


def test_load_run_warns_naming_the_gate_failure(failed_run):
    _, _, folder = failed_run
    with pytest.warns(epochal.GateFailedWarning, match=r"gate_failed: gate not passed \(eval_mse < 1e-09\)"):
        loaded = epochal.load_run(folder, weights="last")
    assert loaded.evaluate()["eval_mse"] > 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error", epochal.GateFailedWarning)  # how a script refuses failed configs
        with pytest.raises(epochal.GateFailedWarning):
            epochal.load_run(folder, weights="last")


def test_the_run_report_shows_the_status_and_why(failed_run, capsys):
    _, _, folder = failed_run
    assert main(["report", str(folder)]) == 0
    html = (folder / "report.html").read_text()
    assert "badge gate_failed" in html and "The gate was not passed: a failed config" in html
    assert "gate not passed (eval_mse &lt; 1e-09) by the end of training" in html


def test_a_passed_run_is_still_completed_with_exit_code_0(tmp_path, capsys):
    code = main([*ARGS[:-2], "--set", "gate.below={eval_mse=1e9}", "--out", str(tmp_path), "--id", "p"])
    assert code == 0 and capsys.readouterr().out.strip().splitlines()[-1] == "completed: gate passed at epoch 1"


def test_older_folders_and_trackers_read_the_same_status():
    old = {"status": "completed", "metadata": {"gate_passed": False}}
    assert status_of(old) == "gate_failed"
    assert status_of({"status": "completed", "metadata": {"gate_passed": True}}) == "completed"
    assert status_of({"status": "completed", "metadata": {}}) == "completed"  # no gate: nothing to fail
    assert END_STATUS["gate_failed"] == "FAILED" and END_STATUS["completed"] == "FINISHED"
    assert wandb_exit_code("gate_failed") == 3 and wandb_exit_code("completed") == 0
    assert wandb_exit_code("failed") == 1
