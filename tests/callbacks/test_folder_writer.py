"""result.json: rewritten at evaluations, at the end, and between them at most every RESULT_EVERY_SECONDS."""

import pytest

from epochal.callbacks import folder_writer

SETTINGS = {"train.max_epochs": 6, "train.eval_every": 3, "checkpoint.every_epochs": 0}


def result_writes(written):
    return sum(path.name == "result.json" for path in written)


def test_result_json_follows_evaluations_not_every_tiny_epoch(run_toy, written):
    result = run_toy(settings=SETTINGS)
    # epoch 1 (the first of the attempt), epochs 3 and 6 (evaluated), and the end
    assert result_writes(written) == 4
    assert result.result["epochs"] == 6


@pytest.mark.parametrize("seconds, writes", [(0.0, 7), (1e9, 4)])
def test_an_epoch_without_evaluation_rewrites_result_json_once_the_interval_has_passed(run_toy, written,
                                                                                      monkeypatch, seconds, writes):
    monkeypatch.setattr(folder_writer, "RESULT_EVERY_SECONDS", seconds)
    run_toy(settings=SETTINGS)
    assert result_writes(written) == writes
