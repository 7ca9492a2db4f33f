import pytest
import torch

from epochal.config import RunConfig, parse_override
from epochal.resolve import resolve
from epochal.errors import ConfigError
from epochal.optim import build_adamw
from epochal.step import nonfinite_guard


def test_defaults_task_defaults_file_and_overrides_layer_in_order():
    config = resolve("toy", [{"train": {"batch_size": 32}, "task": {"hidden": 8}}, {"train": {"batch_size": 16}}])
    assert config.train.batch_size == 16  # override beats file
    assert config.task.hidden == 8  # file beats the task's dataclass default
    assert config.optim.lr == 3e-3  # the toy task's default beats the core default
    assert config.checkpoint.best_metric == "eval_mse"


def test_toml_round_trip_is_the_same_config():
    config = resolve("toy", [{"gate": {"above": {"eval_mse": 0.5}}, "schedule": {"warmup_steps": 3}}])
    import tomllib

    again = resolve(None, [tomllib.loads(config.to_toml())])
    assert again == config and again.hash() == config.hash()


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"train": {"bogus": 1}}, "train.bogus: unknown key; allowed: max_epochs"),
        ({"train": {"batch_size": "64"}}, "train.batch_size: expected int, got '64'"),
        ({"train": {"batch_size": 1.5}}, "train.batch_size: expected int"),
        ({"optim": {"lr": -1.0}}, "optim.lr: -1.0 must be positive"),
        ({"early_stop": {"patience": -1}}, "early_stop.patience: -1 is negative"),
        ({"train": {"precision": "fp8"}}, "train.precision: 'fp8' is not allowed; allowed: fp32, bf16, fp16"),
        ({"optim": {"betas": [0.9]}}, "optim.betas: expected 2 values"),
        ({"task": {"hidden": True}}, "task.hidden: expected int, got True"),
        ({"nonsense": {}}, "nonsense: unknown section or key"),
        ({"early_stop": {"enabled": True}}, "early_stop.metric: required"),
    ],
)
def test_bad_settings_name_the_key_and_what_is_allowed(layer, message):
    with pytest.raises(ConfigError) as err:
        resolve("toy", [layer])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown task 'nope'; allowed: .*toy.*, or an import path package.module:TaskClass"):
        resolve("nope", [])


def test_missing_required_task_field_is_named():
    from dataclasses import dataclass

    from epochal.config import build_dataclass

    @dataclass
    class Needs:
        arch: str  # no default: required

    with pytest.raises(ConfigError, match="task.arch: required setting is missing"):
        build_dataclass(Needs, {}, "task")


def test_overrides_parse_values_as_toml():
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("gate.above={ acc = 0.9 }") == ("gate.above", {"acc": 0.9})
    assert parse_override("train.device=cpu") == ("train.device", "cpu")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("train.lr")


def test_run_dir_uses_group():
    config = resolve("toy", [{"group": "sweep", "experiment_id": "a", "out_dir": "out"}])
    assert isinstance(config, RunConfig) and str(config.run_dir) == "out/sweep/a"


def test_task_may_be_named_by_a_top_level_string():
    assert resolve(None, [{"task": "toy"}]).task_name == "toy"
    with pytest.raises(ConfigError, match="task: expected a table"):
        resolve(None, [{"task": 3}])


def test_a_later_layer_replaces_a_table_setting_whole():
    walks_default = resolve("walks", [])
    assert walks_default.gate.above == {"edge_compliance": 0.95, "rule_compliance": 0.80}
    assert resolve("walks", [{"gate": {"above": {}}}]).gate.above == {}
    only_edge = resolve("walks", [{"gate": {"above": {"edge_compliance": 0.9}}}])
    assert only_edge.gate.above == {"edge_compliance": 0.9}
    assert only_edge.train.batch_size == 64  # sections still merge key by key


def test_skip_policy_needs_the_device_guard():
    with pytest.raises(ConfigError, match="train.nan_policy: 'skip' needs train.guard_nonfinite = true or unset"):
        resolve("toy", [{"train": {"nan_policy": "skip", "guard_nonfinite": False}}])


@pytest.mark.parametrize("policy, guard, guarded", [("stop", None, False), ("rollback", None, False), ("skip", None, True),
                                                    ("stop", True, True), ("skip", True, True), ("rollback", False, False)])
def test_the_device_guard_is_on_where_the_policy_needs_it_unless_set(policy, guard, guarded):
    train = {"nan_policy": policy} if guard is None else {"nan_policy": policy, "guard_nonfinite": guard}
    config = resolve("toy", [{"train": train}]).train
    fused = build_adamw(torch.nn.Linear(2, 2), 1e-3, 0.0, (0.9, 0.999), 1e-8)
    assert fused.defaults.get("fused")
    assert nonfinite_guard(config.nan_policy, config.guard_nonfinite, fused) is guarded


def test_the_device_guard_needs_a_fused_optimizer():
    plain = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    assert nonfinite_guard("stop", True, plain) is False  # nothing reads the flag: the step is not guarded
    with pytest.raises(ConfigError, match="'skip' needs an optimizer that skips a step on the device"):
        nonfinite_guard("skip", None, plain)


@pytest.mark.parametrize("setting, mode", [(True, "default"), (False, "off"), ("off", "off"),
                                           ("max-autotune", "max-autotune"), ("reduce-overhead", "reduce-overhead")])
def test_compile_takes_a_mode_and_true_means_default(setting, mode):
    assert resolve("toy", [{"train": {"compile": setting}}]).train.compile == mode


def test_an_unknown_compile_mode_lists_the_modes():
    with pytest.raises(ConfigError) as refused:
        resolve("toy", [{"train": {"compile": "fast"}}])
    assert str(refused.value) == ("train.compile: 'fast' is not a compile mode; allowed: off, default, "
                                  "reduce-overhead, max-autotune, true (default) or false (off)")


def test_matmul_precision_names_the_allowed_values():
    with pytest.raises(ConfigError, match="train.matmul_precision: 'tf32' is not allowed; allowed: highest, high, medium"):
        resolve("toy", [{"train": {"matmul_precision": "tf32"}}])
