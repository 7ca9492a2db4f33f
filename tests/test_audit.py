import json

import pytest

from epochal.audit import first_difference
from epochal.cli import main


def test_first_difference_names_the_step_and_values():
    assert first_difference([1.0, 2.0], [1.0, 2.0]) is None
    assert first_difference([1.0, 2.0, 3.0], [1.0, 2.5, 3.0]) == "step 2: 2.0 vs 2.5"
    assert first_difference([1.0], [1.0, 2.0]) == "1 vs 2 steps"


@pytest.mark.slow
def test_audit_passes_for_the_toy_task(tmp_path, capsys):
    # A table-valued override travels whole: the gate below passes at epoch 2 of 3 (eval_mse 0.477, 0.449, ...).
    code = main(["audit", "toy", "--kills", "1", "--epochs", "3", "--set", "task.n_train=128",
                 "--set", "group=\"sweep\"", "--set", "gate.below={eval_mse=0.46}", "--id", "mine",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "a vs b: losses identical, weights identical" in out
    assert "a vs killed: losses identical, weights identical" in out
    for aspect in ("initial weights", "training data", "batch order", "eval and test metrics", "artifacts"):
        assert out.count(f"  {aspect}: identical") == 2, (aspect, out)
    assert "the first to differ" not in out
    result = json.loads((tmp_path / "sweep" / "mine-killed" / "result.json").read_text())
    assert result["metadata"]["gate_passed"] and result["epochs"] < 3


def test_audit_of_a_bad_config_is_one_error_line(tmp_path, capsys):
    code = main(["audit", "toy", "--set", "train.nope=1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("epochal: error: train.nope: unknown key") and err.count("\n") == 1


def test_compare_runs_names_the_first_aspect_that_differs(run_toy):
    from epochal.audit import compare_runs

    a, b = run_toy("a").run_dir, run_toy("b").run_dir
    assert all(difference is None for _, difference in compare_runs(a, b)), compare_runs(a, b)
    (b / "notes.txt").write_text("an artifact only one run has\n")
    assert [aspect for aspect, difference in compare_runs(a, b) if difference] == ["artifacts"]
    other_seed = run_toy("c", settings={"train.seed": 1}).run_dir
    differing = [aspect for aspect, difference in compare_runs(a, other_seed) if difference]
    assert differing[:4] == ["initial weights", "training data", "batch order", "losses"]  # toy data follows the seed


def test_a_warning_line_of_the_history_is_not_a_difference_between_runs(tmp_path):
    from epochal.audit import _normalised

    step = '{"step": 1, "loss": 0.5, "seconds": 0.1}\n'
    warned = '{"event": "warning", "step": 1, "category": "UserWarning", "message": "once per process"}\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "history.jsonl").write_text(step)
    (tmp_path / "b" / "history.jsonl").write_text(step + warned)  # e.g. shown again by the resumed process
    assert _normalised(tmp_path / "a" / "history.jsonl") == _normalised(tmp_path / "b" / "history.jsonl")
