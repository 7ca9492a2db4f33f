"""The flow task through the core: config, build, loss, evaluation, and a tiny end-to-end run."""

import json
import tomllib

import numpy as np
import pytest
import torch

from epochal import recipes
from epochal.checkpoint import CheckpointStore
from epochal.resolve import resolve
from epochal.errors import ConfigError
from epochal.tasks import RunContext, get_task
from epochal.tasks.flow.data import STATS_FILE, NormStats
from epochal.tasks.flow.task import PLOT_FILE, SAMPLED_METRICS, FlowConfig

REQUIRED = {"arch": "mlp", "flow": "icfm", "dataset": "moons", "aug": "none"}


def config_layer(**task):
    return {"group": "tests", "task": {**REQUIRED, **task}}


def test_seed_defaults_are_applied():
    config = resolve("flow", [config_layer()])
    assert config.ema.enabled and config.ema.decay == 0.9999
    assert config.train.grad_clip == 1.0
    assert (config.early_stop.enabled, config.early_stop.metric, config.early_stop.mode) == (True, "val_fm_loss", "min")
    assert config.early_stop.patience == 20
    assert (config.schedule.kind, config.schedule.warmup_steps) == ("cosine", 1000)


@pytest.mark.parametrize("missing", ["arch", "flow", "dataset", "aug"])
def test_required_task_fields(missing):
    layer = config_layer()
    del layer["task"][missing]
    with pytest.raises(ConfigError, match=f"task.{missing}: required"):
        resolve("flow", [layer])


def test_group_is_required():
    layer = config_layer()
    del layer["group"]
    with pytest.raises(ConfigError, match="^group: required for the flow task"):
        resolve("flow", [layer])


@pytest.mark.parametrize(
    "task, message",
    [
        ({"dataset": "file"}, "task.data_path: required"),
        ({"data_path": "x.npy"}, "task.data_path: only read"),
        ({"dataset": "gmm8d", "aug": "rotate"}, "task.aug: 'rotate' needs 2-D"),
        ({"train_fraction": 0.0}, "task.train_fraction"),
        ({"val_fraction": 0.3, "test_fraction": 0.3}, "at most half"),
        ({"time_dim": 7}, "task.time_dim"),
        ({"ode_steps": 0}, "task.ode_steps"),
        ({"test_draws": 1}, "task.test_draws: 1; allowed: >= 2"),
        ({"floor_draws": 1}, "task.floor_draws"),
        ({"arch": "transformer"}, "task.arch"),
    ],
)
def test_impossible_settings(task, message):
    with pytest.raises(ConfigError, match=message):
        resolve("flow", [config_layer(**task)])


@pytest.mark.parametrize("name", ["flow-moons", "flow-8gaussians"])
def test_recipes_resolve(name):
    config = resolve(None, [tomllib.loads(recipes.text(name))])
    assert config.task_name == "flow" and config.group and config.ema.enabled


def build(tmp_path, **task):
    cfg = FlowConfig(**{**REQUIRED, "n_samples": 600, "hidden": 16, "depth": 1, "swd_directions": 32, "floor_draws": 8,
                        "eval_draws": 2, "test_draws": 2, **task})
    cfg.validate()
    run = RunContext(tmp_path, torch.device("cpu"), 0, None)
    flow_task = get_task("flow")
    return flow_task, flow_task.build(cfg, run)


def test_build_loss_and_deterministic_evaluation(tmp_path):
    torch.manual_seed(0)
    task, built = build(tmp_path, train_fraction=0.5)
    assert set(built.train_data) == {"x1"} and built.train_data["x1"].shape == (240, 2)
    stats, _ = NormStats.load_tensors(tmp_path / STATS_FILE)
    torch.testing.assert_close(built.train_data["x1"].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert stats.mean.shape == (2,)
    out = task.loss(built.model, task.prepare_batch({"x1": built.train_data["x1"][:32]}))
    assert set(out) == {"loss"} and out["loss"].ndim == 0 and out["loss"].requires_grad
    with torch.no_grad():
        first = task.evaluate(built.model, built.eval_context)
        torch.manual_seed(123)  # evaluation noise is fixed, whatever the global RNG
        second = task.evaluate(built.model, built.eval_context)
    assert first == second
    assert set(first) == {"val_fm_loss", *SAMPLED_METRICS, "swd_floor"}
    assert first["swd_ratio"] == pytest.approx(first["sample_swd"] / first["swd_floor"])
    floor = built.eval_context.yardstick.swd_floor
    assert first["swd_z"] == pytest.approx((first["sample_swd"] - floor.mean) / floor.sd)
    assert first["swd_floor"] > 0 and first["off_support_ratio"] > 2  # an untrained model is far off


def test_sample_quality_only_on_due_epochs(tmp_path):
    task, built = build(tmp_path, quality_every=3)
    ctx = built.eval_context
    ctx.max_epochs = 10
    measured = {}
    with torch.no_grad():
        for epoch in (1, 3, 9, 10):
            ctx.epoch = epoch
            measured[epoch] = task.evaluate(built.model, ctx)
    assert [np.isnan(measured[e]["swd_ratio"]) for e in (1, 3, 9, 10)] == [True, False, False, False]
    assert measured[1].keys() == measured[3].keys()
    assert all(np.isnan(measured[1][k]) for k in SAMPLED_METRICS) and measured[1]["swd_floor"] > 0
    assert measured[1]["val_fm_loss"] == measured[3]["val_fm_loss"]  # the loss is measured every time


def test_a_measure_passing_the_goal_is_confirmed_on_more_draws(tmp_path):
    task, built = build(tmp_path, eval_draws=2, test_draws=5)
    ctx = built.eval_context
    with torch.no_grad():
        ctx.goal = {"swd_ratio": ("<", 0.0)}  # never met: the small measure stands
        assert task.evaluate(built.model, ctx)["sample_draws"] == 2
        ctx.goal = {"swd_ratio": ("<", 1e9)}  # always met: re-measured on 5 other draws
        confirmed = task.evaluate(built.model, ctx)
    assert confirmed["sample_draws"] == 5
    with torch.no_grad():
        assert confirmed == task.evaluate(built.model, ctx)  # fixed noise, also for the re-measure
        assert task.test(built.model, ctx)["test_sample_swd"] != confirmed["sample_swd"]  # test() draws its own


def test_a_sampled_metric_cannot_drive_early_stopping(tmp_path):
    layer = {**config_layer(), "early_stop": {"metric": "swd_ratio"}}
    with pytest.raises(ConfigError, match="early_stop.metric: 'swd_ratio' is measured only every"):
        resolve("flow", [layer])
    layer["task"]["quality_every"] = 1
    assert resolve("flow", [layer]).early_stop.metric == "swd_ratio"


def test_otcfm_and_flip_run(tmp_path):
    torch.manual_seed(0)
    task, built = build(tmp_path, flow="otcfm", aug="flip", dataset="8gaussians", eval_batch_size=25)
    loss = task.loss(built.model, task.prepare_batch({"x1": built.train_data["x1"][:16]}))["loss"]
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert np.isfinite(task.evaluate(built.model, built.eval_context)["val_fm_loss"])


def test_bad_data_file_fails_at_build(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((100, 3)))
    with pytest.raises(ConfigError, match="task.aug: 'rotate' needs 2-D data, task.data_path has dimension 3"):
        build(tmp_path, dataset="file", data_path=str(path), aug="rotate")
    with pytest.raises(ConfigError, match="task.data_path: file not found"):
        build(tmp_path, dataset="file", data_path=str(tmp_path / "missing.csv"))


@pytest.mark.slow
def test_tiny_run_improves_the_sample_distance(tmp_path):
    from epochal import run as fit

    overrides = {
        "train.max_epochs": 15, "train.batch_size": 128, "train.progress": False, "optim.lr": 1e-2,
        "schedule.warmup_steps": 10, "ema.decay": 0.99, "ema.warmup": True,
        "task.n_samples": 4000, "task.hidden": 64, "task.depth": 2, "task.swd_directions": 64,
    }
    lines = []
    result = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, log=lines.append)
    assert result.status == "completed"
    assert any(line.startswith("flow: floor at 400 points over 32 fresh draws") for line in lines)
    written = json.loads((result.run_dir / "result.json").read_text())
    ratios = written["curves"]["swd_ratio"]  # sample distance / floor; null between quality epochs
    assert [i + 1 for i, r in enumerate(ratios) if r is not None] == [5, 10, 15]  # task.quality_every = 5
    assert ratios[-1] < 0.7 * ratios[4]
    tested = result.result["test"]["last"]
    assert tested["test_swd_ratio"] > 0 and tested["test_real_off_support"] > 0 and "test_goal_met" not in tested
    assert result.run_dir.parent.name == "tests"  # results/<group>/<id>
    assert (result.run_dir / PLOT_FILE).stat().st_size > 10_000
    saved = torch.load(result.run_dir / STATS_FILE, weights_only=True)
    assert set(saved) >= {"mean", "std", "data_sha256", "split_seed", "val_fraction", "test_fraction"}


@pytest.mark.slow
def test_the_gate_waits_for_a_quality_epoch(tmp_path):
    from epochal import run as fit

    overrides = {
        "train.max_epochs": 6, "train.batch_size": 200, "train.progress": False, "schedule.warmup_steps": 2,
        "task.n_samples": 1000, "task.hidden": 16, "task.depth": 1, "task.quality_every": 3,
        "task.eval_samples": 100, "task.eval_draws": 2, "task.test_draws": 2, "task.floor_draws": 4,
        "gate.below": {"swd_ratio": 1e9},  # any measured ratio passes; an unmeasured (NaN) one never does
    }
    result = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, log=lambda _: None)
    meta = result.result["metadata"]
    assert (meta["gate_passed"], meta["gate_epoch"], result.result["epochs"]) == (True, 3, 3)
    assert result.result["test"]["last"]["test_goal_met"] == 1.0


def test_a_resume_refuses_a_damaged_or_foreign_normalisation_file_in_one_line(tmp_path, capsys):
    from epochal import load_run, run as fit
    from epochal.cli import main
    from epochal.errors import CheckpointError

    overrides = {"train.max_epochs": 1, "train.batch_size": 200, "train.progress": False, "log.plots": False,
                 "schedule.warmup_steps": 1, "task.n_samples": 500, "task.hidden": 8, "task.depth": 1,
                 "task.eval_samples": 50, "task.eval_draws": 2, "task.test_draws": 2, "task.floor_draws": 2,
                 "task.swd_directions": 8}
    run_dir = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="f",
                  log=lambda _: None).run_dir
    path = run_dir / STATS_FILE
    good = path.read_bytes()
    loaded = load_run(run_dir, weights="last")  # loading reads the run's own statistics back
    np.testing.assert_array_equal(loaded.eval_context.stats.mean, NormStats.load_tensors(path)[0].mean)
    stats, fingerprint = NormStats.load_tensors(path)
    other = type(fingerprint)(**{**fingerprint.__dict__, "split_seed": 7})
    stats.save_tensors(path, other)  # as if fitted on another split
    assert main(["resume", str(run_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: fitted on other data than this run's: split_seed 7 (saved) vs 0" in err
    with pytest.raises(CheckpointError, match="fitted on other data"):
        load_run(run_dir, weights="last")
    path.write_bytes(good[: len(good) // 2])
    assert main(["resume", str(run_dir), "--no-progress"]) == 1
    assert f"{path}: unreadable" in capsys.readouterr().err
    path.unlink()
    assert main(["resume", str(run_dir), "--no-progress"]) == 1
    assert f"{path}: missing" in capsys.readouterr().err
    path.write_bytes(good)
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    assert "already completed" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_with_ema_equals_the_uninterrupted_run(tmp_path):
    from epochal import run as fit
    from tests.test_resume import SignalAtStep

    overrides = {
        "train.max_epochs": 2, "train.batch_size": 128, "train.progress": False, "schedule.warmup_steps": 5,
        "ema.decay": 0.99, "task.n_samples": 1000, "task.hidden": 32, "task.depth": 2, "task.swd_directions": 16,
        "task.eval_samples": 200, "task.eval_draws": 1, "task.floor_draws": 4, "task.test_draws": 2,
    }
    quiet = lambda _: None  # noqa: E731
    straight = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="straight", log=quiet)
    stopped = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="stopped", log=quiet,
                  callbacks=[SignalAtStep(9)])  # mid-epoch 2 (7 steps an epoch)
    assert stopped.status == "preempted"
    resumed = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="stopped", log=quiet,
                  resume="must")
    curves = [json.loads((r.run_dir / "result.json").read_text())["curves"] for r in (straight, resumed)]
    assert curves[0] == curves[1]  # as written: NaN (no quality measure that epoch) is null, and null == null
    a, b = (CheckpointStore(r.run_dir / "checkpoints", 3).load_states("last.pt") for r in (straight, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k])
               for k in a["ema"]["shadow"])
