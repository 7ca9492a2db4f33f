"""`epochal run scratch-mlp`: a standard run folder, the core settings applied or refused, never ignored."""

import json
import tomllib

import pytest

from epochal.cli import main
from epochal.config import load_toml
from epochal.resolve import resolve
from epochal.scratch import ScratchMLPConfig
from epochal.scratch.task import run_settings

TINY = ["--set", "task.n_samples=300", "--epochs", "2"]  # 240 training examples: 4 steps an epoch


def _run(out, run_id, *args):
    code = main(["run", "scratch-mlp", "--out", str(out), "--id", run_id, *TINY, *args])
    assert code == 0
    folder = out / run_id
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    return {
        "result": json.loads((folder / "result.json").read_text()),
        "steps": [h for h in history if "epoch_end" not in h],
        "config": tomllib.loads((folder / "config.toml").read_text()),
        "env": json.loads((folder / "env.json").read_text()),
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("baseline"), "base")


def _losses(run):
    return [s["loss"] for s in run["steps"]]


def _lrs(run):
    return [s["lr"] for s in run["steps"]]


APPLIED_CASES = [
    (["--epochs", "3"], "train.max_epochs", 3,
     lambda r, b: r["result"]["epochs"] == 3 and r["result"]["steps"] == 12 and r["result"]["eval_epochs"] == [1, 2, 3]),
    (["--batch-size", "100"], "train.batch_size", 100, lambda r, b: r["result"]["steps"] == 2 * 3),
    (["--batch-size", "100", "--set", "train.drop_last=true"], "train.drop_last", True,
     lambda r, b: r["result"]["steps"] == 2 * 2),
    (["--lr", "0.1"], "optim.lr", 0.1, lambda r, b: max(_lrs(r)) == 0.1 and max(_lrs(b)) == 0.01),
    (["--seed", "5"], "train.seed", 5, lambda r, b: r["env"]["seed"] == 5 and _losses(r)[0] != _losses(b)[0]),
    (["--set", "train.grad_clip=0"], "train.grad_clip", 0.0,
     lambda r, b: max(s["grad_norm"] for s in b["steps"][:-1]) > 1 and _losses(r)[1:] != _losses(b)[1:]),
    (["--epochs", "3", "--set", "train.eval_every=2"], "train.eval_every", 2,
     lambda r, b: r["result"]["eval_epochs"] == [2, 3] and len(r["result"]["curves"]["val_accuracy"]) == 2),
    (["--set", "optim.weight_decay=0.5"], "optim.weight_decay", 0.5, lambda r, b: _losses(r)[1:] != _losses(b)[1:]),
    (["--set", "optim.betas=[0.5, 0.9]"], "optim.betas", [0.5, 0.9], lambda r, b: _losses(r)[1:] != _losses(b)[1:]),
    (["--set", "optim.eps=0.1"], "optim.eps", 0.1, lambda r, b: _losses(r)[1:] != _losses(b)[1:]),
    (["--set", "schedule.kind=\"constant\""], "schedule.kind", "constant",
     lambda r, b: set(_lrs(r)) == {0.01} and len(set(_lrs(b))) == 8),
    (["--set", "schedule.warmup_steps=4"], "schedule.warmup_steps", 4,
     lambda r, b: _lrs(r)[:5] == [0.0, 0.0025, 0.005, 0.0075, 0.01] and _lrs(b)[0] == 0.01),
    (["--set", "schedule.warmup_fraction=0.5"], "schedule.warmup_fraction", 0.5, lambda r, b: _lrs(r)[4] == 0.01),
    (["--set", "schedule.min_lr_ratio=0.5"], "schedule.min_lr_ratio", 0.5,
     lambda r, b: 0.005 < _lrs(r)[-1] < 0.01 and _lrs(b)[-1] < 0.005),
]


@pytest.mark.parametrize("args, key, recorded, check", APPLIED_CASES, ids=[c[1] for c in APPLIED_CASES])
def test_each_core_setting_changes_the_run_and_is_recorded(tmp_path, baseline, args, key, recorded, check):
    run = _run(tmp_path, "s", *args)
    section, name = key.split(".")
    assert run["config"][section][name] == recorded
    assert baseline["config"][section].get(name) != recorded
    assert check(run, baseline)


REFUSED_CASES = [
    (["--precision", "bf16"], "train.precision"),
    (["--device", "cuda"], "train.device"),
    (["--set", "train.grad_accum=2"], "train.grad_accum"),
    (["--set", "train.nan_policy=\"rollback\""], "train.nan_policy"),
    (["--set", "train.compile=true"], "train.compile"),
    (["--set", "optim.decay_all=false"], "optim.decay_all"),
    (["--set", "ema.enabled=true"], "ema.enabled"),
    (["--set", "early_stop.enabled=true", "--set", "early_stop.metric=\"val_loss\""], "early_stop.enabled"),
    (["--set", "gate.above={val_accuracy=0.9}"], "gate.above"),
    (["--set", "checkpoint.every_steps=5"], "checkpoint.every_steps"),
    (["--set", "schedule.warmup_steps=1000"], "schedule.warmup_steps"),
    (["--seed", "-1"], "train.seed"),
]


@pytest.mark.parametrize("args, key", REFUSED_CASES, ids=[c[1] for c in REFUSED_CASES])
def test_a_setting_it_cannot_apply_is_refused_in_one_line_before_any_folder(tmp_path, capsys, args, key):
    code = main(["run", "scratch-mlp", "--out", str(tmp_path / "out"), "--id", "s", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"epochal: error: {key}: ") and err.count("\n") == 1 and "allowed" in err, err
    assert not (tmp_path / "out").exists()


def test_config_toml_records_only_what_was_applied_and_reruns_the_same(baseline, tmp_path):
    run = _run(tmp_path, "s", "--no-progress", "--deterministic", "--set", "train.log_every=7", "--device", "cpu")
    recorded = {f"{section}.{key}" for section, table in run["config"].items() if isinstance(table, dict)
                for key in table}
    assert {k for k in recorded if not k.startswith("task.")} == {
        "train.max_epochs", "train.batch_size", "train.drop_last", "train.grad_clip", "train.eval_every",
        "train.seed", "optim.lr", "optim.weight_decay", "optim.betas", "optim.eps", "optim.decay_all",
        "schedule.kind", "schedule.warmup_fraction", "schedule.min_lr_ratio"}
    assert _losses(run) == _losses(baseline)  # the always-honoured settings change nothing
    again = resolve(None, [load_toml(tmp_path / "s" / "config.toml")])
    assert again.hash() == run["result"]["metadata"]["config_hash"]  # the same resolved config as the run's
    assert run_settings(again) == run_settings(resolve("scratch-mlp", [{"task": {"n_samples": 300},
                                                                        "train": {"max_epochs": 2}}]))


def test_the_default_run_trains_the_reference_config():
    """`epochal run scratch-mlp` with no settings is train_mlp(ScratchMLPConfig()): the same curve as ever."""
    assert run_settings(resolve("scratch-mlp", [])) == ScratchMLPConfig()


def test_scratch_mlp_runs_from_the_cli_into_a_standard_run_folder(baseline):
    result = baseline["result"]
    assert result["status"] == "completed" and result["steps"] == 8 == len(result["curves"]["train_loss"])
    assert len(baseline["steps"]) == 8
    assert result["eval_epochs"] == [1, 2] and len(result["curves"]["val_accuracy"]) == 2


def test_scratch_mlp_bad_setting_is_one_line(tmp_path, capsys):
    code = main(["run", "scratch-mlp", "--out", str(tmp_path), "--id", "s", "--set", "task.activation=\"swish\""])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("epochal: error: task.activation") and err.count("\n") == 1
