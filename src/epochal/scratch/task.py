"""`epochal run scratch-mlp`: the NumPy reference trainer, recorded in a standard run folder.

It trains without torch, so it brings its own loop (``trains_itself``, ``own_loop``) instead of the
core's. [task] holds the data and the model; how it trains comes from the core
sections, as for every task, so ``--epochs``, ``--batch-size``, ``--lr`` and
``--seed`` mean what they mean elsewhere (``APPLIED`` lists the mapping).

Every other core setting either holds whatever its value (``ALWAYS_HONOURED``:
accepted, not recorded) or has no meaning without torch (EMA, gate, early stopping,
checkpoints, mixed precision, a GPU, ...): those are refused at resolve time unless
they keep their default, so no run starts with a setting it would ignore.
``config.toml`` records only the applied settings; resolved again it gives the same run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import tomli_w
import torch

from epochal import provenance
from epochal.config import RunConfig, build_config
from epochal.errors import ConfigError
from epochal.run_folder import RunFolder
from epochal.scratch.run import ScratchMLPConfig, ScratchTaskConfig, train_mlp
from epochal.task import Task

# ScratchMLPConfig field -> the core setting a run takes it from.
APPLIED = {
    "epochs": "train.max_epochs",
    "batch_size": "train.batch_size",
    "drop_last": "train.drop_last",
    "max_grad_norm": "train.grad_clip",  # 0 turns clipping off (None in ScratchMLPConfig)
    "eval_every": "train.eval_every",
    "seed": "train.seed",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "betas": "optim.betas",
    "eps": "optim.eps",
    "schedule": "schedule.kind",
    "warmup_fraction": "schedule.warmup_fraction",
    "warmup_steps": "schedule.warmup_steps",
    "min_lr": "schedule.min_lr_ratio",  # a share of optim.lr (an absolute lr in ScratchMLPConfig)
}

# Recorded besides APPLIED: a fixed value that is what the NumPy AdamW does.
FIXED = {"optim.decay_all": True}

# Accepted with any value and not recorded, because the run satisfies every value.
ALWAYS_HONOURED = {
    "train.log_every": "every step's loss is logged",
    "train.deterministic": "a NumPy run is deterministic anyway",
    "train.progress": "there are no progress bars, one line per epoch",
}

# Values accepted besides the default (not recorded: the run is on the CPU either way).
ALSO_ACCEPTED = {"train.device": ("auto", "cpu")}

# Why a setting (or a whole section) cannot be applied; any other value than its default is refused.
WHY_NOT = {
    "train.grad_accum": "each step takes its whole batch at once",
    "train.precision": "NumPy has no mixed precision; it computes in float64",
    "train.device": "the NumPy trainer runs on the CPU",
    "train.nan_policy": "a non-finite loss or gradient always stops the run with an error",
    "train.guard_nonfinite": "the loss and the gradients are always checked before an update",
    "train.max_rollbacks": "there is no rollback",
    "train.rollback_lr_scale": "there is no rollback",
    "train.compile": "there is no torch model to compile",
    "train.cuda_graphs": "the NumPy trainer runs on the CPU",
    "train.microbatch": "the NumPy trainer runs on the CPU, which does not run out of memory in a step",
    "train.matmul_precision": "NumPy computes in float64",
    "optim.decay_all": "the NumPy AdamW decays every parameter, biases included",
    "ema": "it keeps no average of the weights",
    "early_stop": "it always trains train.max_epochs epochs",
    "gate": "it has no gate",
    "checkpoint": "it writes no checkpoints; a run takes about a second",
}
_SECTIONS = ("train", "optim", "schedule", "ema", "early_stop", "gate", "checkpoint")


def _to_core(field: str, value: Any, cfg: ScratchMLPConfig) -> Any:
    if field == "max_grad_norm":
        return 0.0 if value is None else value
    if field == "min_lr":
        return value / cfg.lr if cfg.lr > 0 else 0.0
    return value


def _from_core(field: str, value: Any, config: RunConfig) -> Any:
    if field == "max_grad_norm":
        return value or None
    if field == "min_lr":
        return value * config.optim.lr
    return value


def _defaults() -> dict:
    """The core settings that reproduce ``ScratchMLPConfig()``, the reference run's numbers."""
    reference = ScratchMLPConfig()
    nested: dict = {}
    for field, key in APPLIED.items():
        value = _to_core(field, getattr(reference, field), reference)
        if value is not None:
            section, name = key.split(".")
            nested.setdefault(section, {})[name] = value
    for key, value in FIXED.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    return nested


def _get(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def run_settings(config: RunConfig) -> ScratchMLPConfig:
    """The ``train_mlp`` settings of a resolved run config: [task] plus the applied core settings."""
    applied = {field: _from_core(field, _get(config, key), config) for field, key in APPLIED.items()}
    return ScratchMLPConfig(**dataclasses.asdict(config.task), **applied)


def _show(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _default(field: dataclasses.Field, section: str, defaults: dict) -> Any:
    """The value a setting has when nobody sets it: this task's default, else the core's."""
    core = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    return defaults.get(section, {}).get(field.name, core)


def _refuse_unapplicable(config: RunConfig, defaults: dict) -> None:
    """ConfigError for the first core setting that would be ignored: not applied and not its default."""
    any_value = set(APPLIED.values()) | set(ALWAYS_HONOURED)
    for section in _SECTIONS:
        settings = getattr(config, section)
        for field in dataclasses.fields(settings):
            key = f"{section}.{field.name}"
            expected, value = _default(field, section, defaults), getattr(settings, field.name)
            accepted = [expected, *(v for v in ALSO_ACCEPTED.get(key, ()) if v != expected)]
            if key in any_value or value in accepted:
                continue
            why = WHY_NOT.get(key) or WHY_NOT.get(section) or "the NumPy trainer has no use for it"
            raise ConfigError(f"{key}: {_show(value)} cannot be applied by scratch-mlp ({why}); "
                              f"allowed: {', '.join(_show(v) for v in accepted)}")


def applied_settings(config: RunConfig) -> dict:
    """What ``config.toml`` records: the top-level keys, [task], and the applied core settings."""
    data = config.to_dict()
    recorded = {k: data[k] for k in ("experiment_id", "group", "out_dir")}
    recorded["task"] = data["task"]
    for key in (*APPLIED.values(), *FIXED):
        section, name = key.split(".")
        value = data[section][name]
        if value is not None:  # TOML has no null: an unset warmup_steps is left out
            recorded.setdefault(section, {})[name] = value
    return recorded


class ScratchMLPTask(Task):
    name = "scratch-mlp"
    summary = "NumPy MLP trained by the from-scratch AdamW reference trainer"
    Config = ScratchTaskConfig
    defaults = _defaults()
    trains_itself = True  # the NumPy trainer's own loop, not the core's

    def validate(self, config: RunConfig) -> None:
        _refuse_unapplicable(config, self.defaults)
        run_settings(config).validate(keys=APPLIED)

    def own_loop(self, config: RunConfig, folder: RunFolder, log) -> dict:
        cfg = run_settings(config)
        applied = applied_settings(config)
        folder.write_config(tomli_w.dumps(applied))
        # The hash of what config.toml resolves to: settings that ran alike (progress, ...) do not change it.
        config_hash = build_config(self, [applied]).hash()
        folder.write_json("env.json", provenance.collect(torch.device("cpu"), cfg.seed))
        curves: dict[str, list[float]] = {"train_loss": []}
        eval_epochs: list[int] = []
        started = time.perf_counter()

        def on_step(step: int, epoch: int, metrics: dict) -> None:
            curves["train_loss"].append(metrics["loss"])
            folder.append_history([{"step": step, "epoch": epoch + 1, **metrics}])

        def on_epoch(epoch: int, metrics: dict) -> None:
            eval_epochs.append(epoch + 1)
            for name in ("val_loss", "val_accuracy"):
                curves.setdefault(name, []).append(metrics[name])
            folder.append_history([{"epoch_end": True, "epoch": epoch + 1, "step": len(curves["train_loss"]),
                                    **metrics}])
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {metrics['train_loss']:.4g}  "
                f"val_accuracy {metrics['val_accuracy']:.4g}")

        final = train_mlp(cfg, on_step, on_epoch)
        return {
            "experiment_id": config.experiment_id, "task": self.name, "status": "completed",
            "epochs": cfg.epochs, "steps": final["steps"], "metrics": final, "best": None,
            "eval_epochs": eval_epochs, "curves": curves, "checkpoints": [],
            "metadata": {"stop_reason": "max_epochs reached", "config_hash": config_hash,
                         "train_seconds": round(time.perf_counter() - started, 3)},
        }
