"""train_mlp end to end, and ScratchMLPConfig's checks."""

import dataclasses
import time

import pytest

from epochal.errors import ConfigError
from epochal.scratch import ScratchConfigError, ScratchMLPConfig, train_mlp


@pytest.mark.slow
def test_the_mlp_learns_the_spirals_fast():
    cfg = ScratchMLPConfig()
    steps, epochs = [], []
    start = time.perf_counter()
    result = train_mlp(cfg, on_step=lambda s, e, m: steps.append((s, e, m)),
                       on_epoch=lambda e, m: epochs.append((e, m)))
    elapsed = time.perf_counter() - start
    assert result["val_accuracy"] >= 0.95, result
    assert elapsed < 5.0, elapsed
    assert result["steps"] == cfg.total_steps() == len(steps)
    assert [s for s, _, _ in steps] == list(range(1, len(steps) + 1))
    assert set(steps[0][2]) == {"loss", "grad_norm", "lr"}
    assert steps[0][2]["lr"] == 0.0 and steps[-1][1] == cfg.epochs - 1  # warmup starts at 0
    assert [e for e, _ in epochs] == list(range(cfg.epochs))
    assert set(epochs[0][1]) == {"train_loss", "grad_norm", "lr", "val_loss", "val_accuracy"}
    assert epochs[-1][1]["val_accuracy"] == result["val_accuracy"]
    assert epochs[-1][1]["train_loss"] < epochs[0][1]["train_loss"]


def test_a_linear_model_cannot_fit_the_spirals():
    """The hidden layer is needed: the set is not linearly separable."""
    result = train_mlp(ScratchMLPConfig(layers=0, epochs=10))
    assert result["val_accuracy"] < 0.8


def test_same_config_same_result_and_callbacks_are_optional():
    cfg = ScratchMLPConfig(epochs=3, n_samples=300)
    assert train_mlp(cfg) == train_mlp(cfg)
    assert train_mlp(cfg) != train_mlp(dataclasses.replace(cfg, seed=1))


def test_warmup_steps_wins_over_the_fraction():
    cfg = ScratchMLPConfig(epochs=2, n_samples=300, warmup_steps=3, warmup_fraction=0.5)
    assert train_mlp(cfg)["warmup_steps"] == 3
    assert train_mlp(dataclasses.replace(cfg, warmup_steps=None))["warmup_steps"] == cfg.total_steps() // 2


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(warmup_steps=10_000), r"task.warmup_steps: 10000 is not allowed; an integer in \[0, total steps = 760\]"),
        (dict(schedule="step"), "task.schedule: 'step' is not allowed; choose one of cosine, linear, constant"),
        (dict(dataset="moons"), "task.dataset: 'moons' is not allowed; choose one of spirals, blobs"),
        (dict(activation="gelu"), "task.activation"),
        (dict(hidden=0), "task.hidden: 0 is not allowed; an integer >= 1"),
        (dict(epochs=2.5), "task.epochs"),
        (dict(n_features=1), "task.n_features: 1 is not allowed; an integer >= 2"),
        (dict(n_samples=3), "task.n_samples"),
        (dict(lr=-1.0), r"task.lr: -1.0 is not allowed; a number in \[0.0, inf\]"),
        (dict(min_lr=1.0), "task.min_lr"),
        (dict(val_fraction=0.0), "task.val_fraction"),
        (dict(betas=(0.9, 1.0)), "task.betas"),
        (dict(max_grad_norm=0.0), "task.max_grad_norm"),
    ],
)
def test_bad_config_raises_a_value_error_naming_the_field(changes, message):
    cfg = dataclasses.replace(ScratchMLPConfig(), **changes)
    with pytest.raises(ScratchConfigError, match=message) as info:
        train_mlp(cfg)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)


def test_every_config_field_has_a_comment():
    import inspect

    import epochal.scratch.run as run

    checked = set()
    for cls in (run.ScratchTaskConfig, run.ScratchMLPConfig):
        source = inspect.getsource(cls)
        for name in inspect.get_annotations(cls):  # the class's own fields; inherited ones in their class
            line = next(l for l in source.splitlines() if l.strip().startswith(f"{name}:"))
            assert "  # " in line, name
            checked.add(name)
    assert checked == {f.name for f in dataclasses.fields(ScratchMLPConfig)}
