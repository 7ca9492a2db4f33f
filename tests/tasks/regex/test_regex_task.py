import json

import pytest
import torch
from safetensors.torch import load_file as load_safetensors

from epochal import recipes
from epochal import run as fit
from epochal.checkpoint import load_file, payload_states
from epochal.config import load_toml
from epochal.resolve import resolve
from epochal.errors import ConfigError
from epochal.tasks import RunContext, get_task
from epochal.tasks.regex.task import RegexConfig, RegexTask

# Small enough to train in seconds on one CPU thread; the language needs 4 states.
TINY = {
    "task.pattern": "(a|b)*a(a|b)", "task.alphabet": "ab", "task.min_len": 1, "task.max_len": 8,
    "task.ood_min_len": 9, "task.ood_max_len": 12, "task.n_train": 600, "task.n_val": 100, "task.n_test": 200,
    "task.n_test_ood": 100, "task.d_model": 16, "task.n_heads": 2, "task.d_ff": 32,
    "train.batch_size": 32, "train.progress": False, "optim.lr": 0.01,
}


def quiet(_message: str) -> None:
    pass


def config_with(**task_settings):
    return resolve("regex", [{"task": task_settings}])


@pytest.mark.parametrize(
    ("settings", "field", "hint"),
    [
        ({"pattern": "a(b"}, "task.pattern", "missing ')'"),
        ({"pattern": "a**"}, "task.pattern", "allowed: literals over the alphabet"),
        ({"pattern": "ac"}, "task.pattern", "'c' is not in the alphabet 'ab'"),
        ({"alphabet": "a*"}, "task.alphabet", "distinct single characters"),
        ({"max_len": 20, "ood_min_len": 17}, "task.ood_min_len", "min_len <= max_len < ood_min_len"),
        ({"n_heads": 5}, "task.n_heads", "divisor of d_model"),
        ({"lambda_l1": 0.1}, "task.lambda_l1", "embed_rank"),
        ({"near_miss_fraction": 1.5}, "task.near_miss_fraction", "0..1"),
    ],
)
def test_bad_settings_name_the_field_and_what_is_allowed(settings, field, hint):
    with pytest.raises(ConfigError, match=field) as caught:
        config_with(**settings)
    assert hint in str(caught.value)


def test_defaults_stop_early_and_keep_best_by_validation_class_accuracy():
    config = config_with()
    assert (config.early_stop.enabled, config.early_stop.metric, config.early_stop.mode) == (True, "val_class_acc", "max")
    assert (config.checkpoint.best_metric, config.checkpoint.best_mode) == ("val_class_acc", "max")
    assert isinstance(get_task("regex"), RegexTask)


def test_recipes_load():
    names = recipes.by_task()["regex"]
    assert len(names) >= 2
    for recipe in names:
        config = resolve(None, [load_toml(recipe)])
        assert config.task_name == "regex" and config.early_stop.metric == "val_class_acc", recipe


def test_build_writes_the_automaton_and_equal_length_tensors(tmp_path):
    cfg = RegexConfig(pattern="(a|b)*a(a|b)", n_train=200, n_val=40, n_test=40, n_test_ood=40,
                      max_len=8, ood_min_len=9, ood_max_len=12, d_model=16, n_heads=2, d_ff=32)
    task = RegexTask()
    built = task.build(cfg, RunContext(tmp_path, torch.device("cpu"), 0, config=None))
    fsm = json.loads((tmp_path / "fsm.json").read_text())
    assert fsm["pattern"] == "(a|b)*a(a|b)" and len(fsm["states"]) == 4 and fsm["alphabet"] == ["a", "b"]
    assert {len(v) for v in built.train_data.values()} == {len(built.train_data["tokens"])}
    assert built.train_data["tokens"].shape[1] == 8 + 2
    assert set(built.eval_context.splits) == {"val", "test", "test_ood"}
    losses = task.loss(built.model, {k: v[:8] for k, v in built.train_data.items()})
    assert set(losses) == {"loss", "loss_next", "loss_class", "loss_state", "l1"}
    total, count = losses["loss"]  # a (sum, count) pair: exact under gradient accumulation
    assert torch.isfinite(total / count)


@pytest.mark.slow
def test_end_to_end_tiny_run_reaches_the_threshold_and_saves_captures(tmp_path):
    torch.manual_seed(0)
    result = fit("regex", overrides={**TINY, "train.max_epochs": 8, "task.capture": True},
                 out_dir=tmp_path, experiment_id="tiny", log=quiet)
    assert result.status == "completed"
    tested = result.result["test"]["last"]
    assert tested["test_class_acc"] >= 0.98, tested
    assert "test_ood_class_acc_len_09_12" in tested and "test_class_acc_len_05_08" in tested
    curves = result.result["curves"]
    assert {"loss_next", "loss_class", "loss_state", "l1"} <= set(curves)
    assert (result.run_dir / "fsm.json").exists()
    captures = sorted((result.run_dir / "captures").glob("epoch_*.safetensors"))
    assert captures and captures[0].name == "epoch_0001.safetensors"
    saved = load_safetensors(str(captures[-1]))
    assert saved["attention"].shape[:2] == (2, 8) and saved["hidden"].shape[0] == 3


class FallingValidation(RegexTask):
    """The real metrics, but val_class_acc rises then falls: best.pt must stay at epoch 2."""

    script = (0.5, 0.9, 0.7)

    def __init__(self):
        self.calls = 0

    def evaluate(self, model, ctx):
        metrics = super().evaluate(model, ctx)
        metrics["val_class_acc"] = self.script[self.calls]
        self.calls += 1
        return metrics


@pytest.mark.slow
def test_best_differs_from_last_when_the_metric_falls(tmp_path):
    result = fit(FallingValidation(), overrides={**TINY, "train.max_epochs": 3}, out_dir=tmp_path,
                 experiment_id="falling", log=quiet)
    assert result.result["best"]["epoch"] == 2
    folder = result.run_dir / "checkpoints"
    best, last = (payload_states(load_file(folder / name)) for name in ("best.pt", "last.pt"))
    assert best["state"]["epoch"] == 2 and last["state"]["epoch"] == 3
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    tested = result.result["test"]
    assert tested["best"]["test_nll"] != tested["last"]["test_nll"]


def test_a_language_without_both_classes_is_a_config_error(tmp_path):
    cfg = RegexConfig(pattern="(a|b)*", n_train=20, n_val=4, n_test=4, n_test_ood=4)
    with pytest.raises(ConfigError, match="task.pattern: no length in 1..16 has both"):
        RegexTask().build(cfg, RunContext(tmp_path, torch.device("cpu"), 0, config=None))
