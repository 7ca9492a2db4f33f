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
from epochal.tasks.flow.task import PLOT_FILE, FlowConfig

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
    cfg = FlowConfig(**{**REQUIRED, "n_samples": 600, "hidden": 16, "depth": 1, "swd_directions": 32, **task})
    cfg.validate()
    run = RunContext(tmp_path, torch.device("cpu"), 0, None)
    flow_task = get_task("flow")
    return flow_task, flow_task.build(cfg, run)


def test_build_loss_and_deterministic_evaluation(tmp_path):
    torch.manual_seed(0)
    task, built = build(tmp_path, train_fraction=0.5)
    assert set(built.train_data) == {"x1"} and built.train_data["x1"].shape == (240, 2)
    stats = NormStats.load(tmp_path / STATS_FILE)
    torch.testing.assert_close(built.train_data["x1"].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert stats.mean.shape == (2,)
    out = task.loss(built.model, task.prepare_batch({"x1": built.train_data["x1"][:32]}))
    assert set(out) == {"loss"} and out["loss"].ndim == 0 and out["loss"].requires_grad
    with torch.no_grad():
        first = task.evaluate(built.model, built.eval_context)
        torch.manual_seed(123)  # evaluation noise is fixed, whatever the global RNG
        second = task.evaluate(built.model, built.eval_context)
    assert first == second
    assert set(first) == {"val_fm_loss", "sample_swd", "swd_floor", "swd_ratio"}
    assert first["swd_ratio"] == pytest.approx(first["sample_swd"] / first["swd_floor"])
    assert first["swd_floor"] > 0


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
    result = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, log=lambda _: None)
    assert result.status == "completed"
    ratios = result.result["curves"]["swd_ratio"]  # sample distance / floor, one per epoch
    assert len(ratios) == 15 and ratios[-1] < 0.7 * ratios[0]
    assert result.result["test"]["last"]["test_swd_ratio"] > 0
    assert result.run_dir.parent.name == "tests"  # results/<group>/<id>
    assert (result.run_dir / PLOT_FILE).stat().st_size > 10_000
    assert json.loads((result.run_dir / STATS_FILE).read_text())["format"] == NormStats.FORMAT


@pytest.mark.slow
def test_resume_with_ema_equals_the_uninterrupted_run(tmp_path):
    from epochal import run as fit
    from tests.test_resume import SignalAtStep

    overrides = {
        "train.max_epochs": 2, "train.batch_size": 128, "train.progress": False, "schedule.warmup_steps": 5,
        "ema.decay": 0.99, "task.n_samples": 1000, "task.hidden": 32, "task.depth": 2, "task.swd_directions": 16,
        "task.eval_samples": 200, "task.swd_draws": 1,
    }
    quiet = lambda _: None  # noqa: E731
    straight = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="straight", log=quiet)
    stopped = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="stopped", log=quiet,
                  callbacks=[SignalAtStep(9)])  # mid-epoch 2 (7 steps an epoch)
    assert stopped.status == "preempted"
    resumed = fit("flow", config_layer(), overrides=overrides, out_dir=tmp_path, experiment_id="stopped", log=quiet,
                  resume="must")
    assert resumed.result["curves"] == straight.result["curves"]
    a, b = (CheckpointStore(r.run_dir / "checkpoints", 3).load_states("last.pt") for r in (straight, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k])
               for k in a["ema"]["shadow"])
