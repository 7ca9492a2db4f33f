import json

from epochal.cli import main


def test_scratch_mlp_runs_from_the_cli_into_a_standard_run_folder(tmp_path, capsys):
    code = main(["run", "scratch-mlp", "--out", str(tmp_path), "--id", "s", "--set", "task.epochs=15"])
    assert code == 0
    run_dir = tmp_path / "s"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["metrics"]["val_accuracy"] >= 0.95
    assert len(result["curves"]["train_loss"]) == result["steps"] and len(result["curves"]["val_accuracy"]) == 15
    assert "epochs = 15" in (run_dir / "config.toml").read_text()
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == result["steps"] + 15


def test_scratch_mlp_bad_setting_is_one_line(tmp_path, capsys):
    code = main(["run", "scratch-mlp", "--out", str(tmp_path), "--id", "s", "--set", "task.activation=\"swish\""])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("epochal: error: task.activation") and err.count("\n") == 1
