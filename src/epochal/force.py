"""What ``--force`` may change when a run resumes, and how each change is made to take effect.

Restoring a checkpoint brings back the optimizer's and the scheduler's saved
hyperparameters, which would silently undo a changed setting. So a forced
resume applies each changed setting explicitly, after the restore, and records
it (history.jsonl and a comment in config.toml) with the step it applies from.
A setting not listed in ``APPLIED`` cannot be changed mid-run (it would change
the model, the data order or a policy's saved state) and is refused with one
line before anything is written.
"""

from __future__ import annotations

import json
from typing import Any

from epochal.errors import ConfigError

# Setting -> how it takes effect on a forced resume (the README shows this table).
APPLIED: dict[str, str] = {
    "optim.lr": "new peak rate: the scheduler's base rates are rescaled (a rollback's factor is kept) "
                "and the current rate recomputed from the schedule; used from the next step",
    "optim.weight_decay": "set on the decaying parameter group; used from the next step",
    "optim.betas": "set on every parameter group; used from the next step",
    "optim.eps": "set on every parameter group; used from the next step",
    "train.max_epochs": "the run trains to the new length; the schedule is recomputed for it and "
                        "the rate follows the new curve from the next step",
    "schedule.kind": "the new schedule, evaluated at the resumed step, from the next step",
    "schedule.warmup_fraction": "as schedule.kind",
    "schedule.warmup_steps": "as schedule.kind",
    "schedule.min_lr_ratio": "as schedule.kind",
    "train.grad_clip": "used from the next step",
    "train.log_every": "read at the next step",
    "train.eval_every": "read at the next epoch end",
    "train.nan_policy": "read at the next non-finite value",
    "train.max_rollbacks": "read at the next non-finite value",
    "train.rollback_lr_scale": "read at the next rollback",
    "train.device": "the run continues on the new device (numbers may then differ from an uninterrupted run)",
    "checkpoint.every_epochs": "read at the next epoch end",
    "checkpoint.every_steps": "read at the next step",
    "checkpoint.every_minutes": "read at the next step",
    "checkpoint.keep_last": "read at the next checkpoint",
    "checkpoint.async_write": "read at the next checkpoint",
}
# Changes that move the learning rate of the next step.
_RATE_KEYS = {"optim.lr", "train.max_epochs"} | {k for k in APPLIED if k.startswith("schedule.")}
_GROUP_KEYS = {"optim.weight_decay": "weight_decay", "optim.betas": "betas", "optim.eps": "eps"}


def check_forceable(changes: dict[str, tuple[Any, Any]]) -> None:
    """ConfigError naming the first changed setting a resume cannot apply."""
    for key, (old, new) in sorted(changes.items()):
        if key not in APPLIED:
            raise ConfigError(f"{key}: cannot change when resuming, even with --force ({_show(old)} -> {_show(new)}); "
                              f"allowed with --force: {', '.join(APPLIED)}")


def snapshot(optimizer) -> list[dict]:
    """The freshly built optimizer's per-group hyperparameters (from the new config), before a restore overwrites them."""
    return [{name: group[name] for name in _GROUP_KEYS.values() if name in group} for group in optimizer.param_groups]


def apply(changes: dict[str, tuple[Any, Any]], optimizer, scheduler, fresh: list[dict]) -> None:
    """Make the changed settings hold after a restore (see APPLIED); the rest are read from the config anyway."""
    for key, name in _GROUP_KEYS.items():
        if key in changes:
            for group, built in zip(optimizer.param_groups, fresh):
                # weight decay stays 0 on the no-decay group: the freshly built groups already say which is which
                if name in built:  # a user's optimizer may not have it (SGD has no betas)
                    group[name] = built[name]
    if "optim.lr" in changes:
        old, new = changes["optim.lr"]
        # base / old is exactly 1 without rollbacks, so the new peak is exactly the configured value
        scheduler.base_lrs = [new * (base / old) for base in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["initial_lr"] = new
    if _RATE_KEYS & changes.keys():
        step = scheduler.last_epoch
        rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates  # what get_last_lr() reports


def record(changes: dict[str, tuple[Any, Any]], step: int) -> tuple[dict, list[str]]:
    """The history.jsonl record and the config.toml comment lines of a forced resume at ``step``."""
    entry = {"event": "config_change", "step": step, "applies_from_step": step + 1,
             "changes": {key: {"from": old, "to": new} for key, (old, new) in sorted(changes.items())}}
    notes = [f"# --force at step {step}: {key} = {_show(old)} up to step {step}, {_show(new)} from step {step + 1}"
             for key, (old, new) in sorted(changes.items())]
    return entry, notes


def _show(value: Any) -> str:
    return json.dumps(value)
