"""Seed 003 5.5, for every task on the shared loop: each epoch line of history.jsonl carries train_loss,
val_loss (the task's own loss on its validation split), the accuracies/metrics, lr at the epoch's end and
the epoch's mean grad_norm."""

import json
import math

import pytest
import torch

from epochal import run as fit
from epochal.tasks import RunContext, get_task

# Tiny task settings, as in tests/tasks/*/: a run takes a second or two on one CPU thread.
REGEX_TINY = {
    "task.pattern": "(a|b)*a(a|b)", "task.alphabet": "ab", "task.min_len": 1, "task.max_len": 8,
    "task.ood_min_len": 9, "task.ood_max_len": 12, "task.n_train": 200, "task.n_val": 100, "task.n_test": 200,
    "task.n_test_ood": 100, "task.d_model": 16, "task.n_heads": 2, "task.d_ff": 32, "train.batch_size": 32,
    "optim.lr": 0.01}
WALKS_TINY = {
    "task.n_vertices": 16, "task.n_blocks": 4, "task.p_in": 0.5, "task.p_out": 0.08, "task.n_jumpers": 3,
    "task.rule_distance": 3, "task.num_walks": 200, "task.walk_length": 18, "task.eval_sequences": 20,
    "task.context": 8, "task.d_model": 32, "task.n_layers": 1, "task.n_heads": 2, "optim.lr": 3e-3,
    "train.batch_size": 32}

QUIET = {"train.progress": False, "log.plots": False}
FLOW_TINY = {"group": "tests", "task.arch": "mlp", "task.flow": "icfm", "task.dataset": "moons", "task.aug": "none",
             "train.batch_size": 200, "schedule.warmup_steps": 1, "task.n_samples": 500, "task.hidden": 8,
             "task.depth": 1, "task.eval_samples": 50, "task.eval_draws": 2, "task.test_draws": 2,
             "task.floor_draws": 2, "task.swd_directions": 8}
CASES = {  # task -> (settings for a 2-epoch run of a second or two, the metric that is its val_loss or None)
    "toy": ({"task.n_train": 128, "task.n_eval": 64}, "eval_mse"),
    "flow": (FLOW_TINY, "val_fm_loss"),
    "regex": (REGEX_TINY, None),
    "walks": (WALKS_TINY, None),
}


def epoch_lines(run_dir):
    lines = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [line for line in lines if line.get("epoch_end")], [line for line in lines if "epoch_end" not in line]


@pytest.mark.parametrize("task", list(CASES))
def test_every_epoch_line_has_the_seed_fields(task, tmp_path):
    settings, metric = CASES[task]
    result = fit(task, overrides={**settings, **QUIET, "train.max_epochs": 2, "train.log_every": 1},
                 out_dir=tmp_path, experiment_id=task, log=lambda _: None)
    epochs, steps = epoch_lines(result.run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for line in epochs:
        mine = [s for s in steps if s["epoch"] == line["epoch"]]
        assert line["train_loss"] == pytest.approx(sum(s["loss"] for s in mine) / len(mine))
        assert line["grad_norm"] == pytest.approx(sum(s["grad_norm"] for s in mine) / len(mine))
        assert isinstance(line["val_loss"], float) and math.isfinite(line["val_loss"]) and line["val_loss"] > 0
        if metric:
            assert line["val_loss"] == line[metric]
        assert set(get_task(task).metrics) <= set(line)  # the accuracies and the task's other metrics
    # lr at the epoch's end: the rate the next step would use, the scheduler's after the last step.
    assert epochs[0]["lr"] == steps[[s["epoch"] for s in steps].index(2)]["lr"]
    assert epochs[1]["lr"] <= epochs[0]["lr"] or task == "toy"


def test_a_task_without_a_validation_loss_writes_null(tmp_path):
    from epochal.tasks.toy import ToyTask

    class NoLoss(ToyTask):
        name = "toy-no-val-loss"
        val_loss_metric = ""

    result = fit(NoLoss(), overrides={**QUIET, **CASES["toy"][0], "train.max_epochs": 1}, out_dir=tmp_path,
                 log=lambda _: None)
    epochs, _ = epoch_lines(result.run_dir)
    assert epochs[0]["val_loss"] is None and "eval_mse" in epochs[0]


def test_the_regex_validation_loss_is_its_training_loss_on_the_validation_split(tmp_path):
    task = get_task("regex")
    cfg = task.Config(**{k.split(".", 1)[1]: v for k, v in REGEX_TINY.items() if k.startswith("task.")})
    built = task.build(cfg, RunContext(tmp_path, torch.device("cpu"), 0, None))
    val = built.eval_context.splits["val"]
    with torch.no_grad():
        whole = task.loss(built.model.eval(), task.prepare_batch(dict(val)))["loss"]
        chunked = task.validation_loss(built.model, built.eval_context)
    assert chunked == pytest.approx(float(whole[0] / whole[1]), rel=1e-5)


@pytest.mark.parametrize("own_eval", [False, True])
def test_epochal_fit_writes_the_loss_on_eval_data_as_val_loss(own_eval, tmp_path):
    import epochal

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    model = torch.nn.Linear(4, 1)
    loss_fn = lambda m, batch: torch.nn.functional.mse_loss(m(batch[0]), batch[1])  # noqa: E731
    eval_fn = (lambda m, data: {"mae": (m(data[0]) - data[1]).abs().mean().item()}) if own_eval else None
    result = epochal.fit(model, (x, y), loss_fn, eval_data=(x[:32], y[:32]), eval_fn=eval_fn,
                         metrics=["mae"] if own_eval else None, out_dir=tmp_path, experiment_id="fit",
                         config={"train": {"max_epochs": 1, "batch_size": 16, "progress": False},
                                 "log": {"plots": False}})
    epochs, _ = epoch_lines(result.run_dir)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(x[:32]), y[:32]).item()
    assert epochs[0]["val_loss"] == pytest.approx(expected, rel=1e-6)
