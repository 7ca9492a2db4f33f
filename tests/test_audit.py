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
    result = json.loads((tmp_path / "sweep" / "mine-killed" / "result.json").read_text())
    assert result["metadata"]["gate_passed"] and result["epochs"] < 3


def test_audit_of_a_bad_config_is_one_error_line(tmp_path, capsys):
    code = main(["audit", "toy", "--set", "train.nope=1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("epochal: error: train.nope: unknown key") and err.count("\n") == 1
