"""The NaN policy's rollbacks, end to end: what the learning rate becomes, where training resumes, what is kept."""

import json

import pytest

from test_checkpoint import PoisonedToy
from test_resume import SignalAtStep

from epochal import run


def train(tmp_path, run_id, bad_calls=(), **settings):
    base = {"train.max_epochs": 3, "train.progress": False, "task.n_train": 256, "train.nan_policy": "rollback",
            "train.log_every": 2, "log.plots": False}  # 4 steps an epoch, a checkpoint at each epoch end
    task = PoisonedToy(set(bad_calls))
    return run(task, overrides={**base, **settings.pop("overrides", {})}, out_dir=tmp_path, experiment_id=run_id,
               log=lambda _: None, **settings)


def step_lrs(result):
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    return {h["step"]: h["lr"] for h in history if "epoch_end" not in h and "event" not in h}


def test_a_rollback_scales_the_rest_of_the_schedule_and_repeated_ones_compound(tmp_path):
    clean = step_lrs(train(tmp_path, "clean"))
    with pytest.warns(UserWarning, match="rolled back"):
        once = train(tmp_path, "once", {6})  # bad at step 6, found at its fetch: back to the step-4 checkpoint
    with pytest.warns(UserWarning, match="rolled back"):
        twice = train(tmp_path, "twice", {6, 8})  # the retrained step 6 is call 8: bad again
    assert once.result["metadata"]["rollbacks"] == 1 and twice.result["metadata"]["rollbacks"] == 2
    for result, factor in ((once, 0.5), (twice, 0.25)):
        lrs = step_lrs(result)
        assert sorted(lrs) == list(range(1, 13))  # every step once: the rolled-back ones were rewritten
        assert all(lrs[s] == pytest.approx(clean[s]) for s in range(1, 5))
        assert all(lrs[s] == pytest.approx(factor * clean[s]) for s in range(5, 13)), (factor, lrs, clean)


def test_a_rollback_found_at_an_epochs_last_fetch_retrains_the_rest_of_that_epoch(tmp_path):
    with pytest.warns(UserWarning, match="rolled back to step 4"):
        result = train(tmp_path, "end", {7}, overrides={"train.log_every": 4})  # fetched only at step 8
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history if "epoch_end" in h] == [1, 2, 3]
    assert [h["step"] for h in history if "epoch_end" not in h] == list(range(1, 13))
    assert result.status == "completed" and len(result.result["curves"]["train_loss"]) == 12


def test_a_non_finite_value_before_any_checkpoint_fails_cleanly(tmp_path):
    result = train(tmp_path, "early", {1})
    assert result.status == "failed" and result.result["steps"] == 2
    assert "no checkpoint to roll back to" in result.stop_reason


def test_the_rollback_count_is_checkpointed_so_max_rollbacks_holds_across_a_resume(tmp_path):
    limit = {"train.max_rollbacks": 1}
    with pytest.warns(UserWarning, match="rolled back"):
        stopped = train(tmp_path, "r", {6}, overrides=limit, callbacks=[SignalAtStep(9)])
    assert stopped.status == "preempted" and stopped.result["metadata"]["rollbacks"] == 1
    resumed = train(tmp_path, "r", {2}, overrides=limit, resume="must")  # call 2 of the new process: step 11
    assert resumed.status == "failed" and "rollbacks exhausted" in resumed.stop_reason


def test_a_rollback_waits_for_the_checkpoint_still_being_written(tmp_path, monkeypatch):
    from test_loop import slow_checkpoint_writes

    slow_checkpoint_writes(monkeypatch, 0.3)  # step 4's checkpoint is still in flight when step 6 goes bad
    with pytest.warns(UserWarning, match="rolled back to step 4"):
        result = train(tmp_path, "slow-disk", bad_calls={6}, overrides={"train.max_epochs": 2})
    assert result.status == "completed" and result.result["metadata"]["rollbacks"] == 1
