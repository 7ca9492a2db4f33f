"""``epochal.fit``: train your own model on your own data, with every promise of a built-in task.

    import epochal
    result = epochal.fit(model, train_data, loss_fn, eval_data=held_out, config={"train": {"max_epochs": 5}})

The model, data and functions become a task (``ScriptTask``) and go through the same
path as the built-in tasks. A script-defined run resumes by running the script again:
its default id is the script's name plus a hash of the resolved config, so the same
script with the same settings finds its own run folder (``resume="auto"``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from epochal.api import Result, run
from epochal.callbacks.base import Callback
from epochal.config import RunConfig
from epochal.resolve import resolve_config
from epochal.step import loss_parts
from epochal.task import Built, RunContext, Task
from epochal.tree import batch_size, leaves, to_device, tree_map

SCRIPT_TASK = "script"


@dataclass
class ScriptConfig:
    script: str = ""  # the script that defined the run: `epochal resume` tells you to run it again


@dataclass
class EvalData:
    """What the default evaluation reads: the held-out data and how to batch it."""

    data: Any
    batch_size: int
    max_batches: int  # 0: all


class ScriptTask(Task):
    name = SCRIPT_TASK
    summary = "a model trained from a Python script with epochal.fit"
    Config = ScriptConfig

    def __init__(self, model: nn.Module, train_data: Any, loss_fn: Callable, eval_data: Any = None,
                 eval_fn: Callable | None = None, metrics: tuple[str, ...] | list[str] | None = None,
                 optimizer: Callable | None = None, scheduler: Callable | None = None):
        self.model, self.train_data, self.loss_fn = model, train_data, loss_fn
        self.eval_data, self.eval_fn = eval_data, eval_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        default = ("eval_loss",) if eval_data is not None and eval_fn is None else ()
        self.metrics = tuple(metrics) if metrics is not None else default
        self.val_loss_metric = "eval_loss" if "eval_loss" in default else ""

    def build(self, cfg: ScriptConfig, run: RunContext) -> Built:
        held_out = self.eval_data
        if held_out is not None and not isinstance(held_out, (Dataset, DataLoader)) and leaves(held_out):
            held_out = to_device(held_out, run.device)
        train = run.config.train
        context = EvalData(held_out, train.batch_size, train.eval_batches)
        return Built(self.model, self.train_data, context, self.optimizer, self.scheduler)

    def loss(self, model: nn.Module, batch: Any) -> Any:
        return self.loss_fn(model, batch)

    def evaluate(self, model: nn.Module, ctx: EvalData) -> dict[str, float]:
        if self.eval_fn is not None:
            return self.eval_fn(model, ctx.data)
        if ctx.data is None:
            return {}
        return {"eval_loss": mean_loss(model, self.loss_fn, ctx)}

    def validation_loss(self, model: nn.Module, ctx: EvalData) -> float | None:
        """With an eval_fn of your own, the loss over eval_data is still history's val_loss."""
        return None if ctx.data is None else mean_loss(model, self.loss_fn, ctx)


def eval_batches(ctx: EvalData):
    """The held-out data in its own order, in batches, at most ``max_batches`` of them."""
    data = ctx.data
    if isinstance(data, DataLoader):
        batches = iter(data)
    elif isinstance(data, (Dataset, IterableDataset)):
        batches = iter(DataLoader(data, batch_size=ctx.batch_size))
    else:
        n = batch_size(data)
        batches = (tree_map(lambda t, s=start: t[s : s + ctx.batch_size], data) for start in range(0, n, ctx.batch_size))
    for count, batch in enumerate(batches):
        if ctx.max_batches and count >= ctx.max_batches:
            return
        yield batch


def mean_loss(model: nn.Module, loss_fn: Callable, ctx: EvalData) -> float:
    """The loss over the held-out data: means weighted by examples, (sum, count) pairs summed and divided."""
    total, count = None, None
    device = next(model.parameters()).device
    for batch in eval_batches(ctx):
        loss = loss_parts(loss_fn(model, to_device(batch, device)))["loss"]
        part_sum, part_count = loss if isinstance(loss, tuple) else (loss * batch_size(batch), batch_size(batch))
        total = part_sum.float() if total is None else total + part_sum.float()
        count = torch.as_tensor(part_count, device=device) if count is None else count + part_count
    return float(total / count) if total is not None else float("nan")


def fit(model: nn.Module, train_data: Any, loss_fn: Callable, *, eval_data: Any = None,
        eval_fn: Callable | None = None, metrics: tuple[str, ...] | list[str] | None = None,
        config: RunConfig | str | Path | dict | None = None, callbacks: list[Callback] = (),
        optimizer: Callable | None = None, scheduler: Callable | None = None, out_dir: str | Path = "results",
        experiment_id: str | None = None, resume: str = "auto", init_from: str | Path | None = None,
        log: Callable[[str], None] | None = None) -> Result:
    """Train ``model`` (in place) on ``train_data`` with ``loss_fn(model, batch)``; see the README.

    ``config``: a dict, TOML path or RunConfig of the usual sections (train, optim,
    schedule, ema, early_stop, gate, checkpoint, init). ``optimizer(params)`` and
    ``scheduler(optimizer, total_steps)`` replace AdamW and the [schedule] section.
    ``resume="auto"`` continues this script's run folder when it exists.
    """
    task = ScriptTask(model, train_data, loss_fn, eval_data, eval_fn, metrics, optimizer, scheduler)
    overrides = {"task.script": script_name()}
    if isinstance(train_data, DataLoader) and not isinstance(train_data.dataset, IterableDataset):
        # The loader's own settings are what runs; config.toml records them.
        if train_data.batch_size is not None:
            overrides["train.batch_size"] = train_data.batch_size
        overrides.update({"train.drop_last": train_data.drop_last, "train.num_workers": train_data.num_workers})
    if init_from is not None:
        overrides["init.path"] = str(init_from)
    if isinstance(config, RunConfig):
        config = config.to_dict()
    _, resolved = resolve_config(task, config, overrides)
    resolved.out_dir = str(out_dir)
    if experiment_id is None and not resolved.experiment_id:
        experiment_id = f"{Path(script_name()).stem or 'fit'}-{resolved.hash()[:8]}"
    extra = {"log": log} if log is not None else {}
    return run(task, resolved, experiment_id=experiment_id, callbacks=list(callbacks), resume=resume, **extra)


def script_name() -> str:
    """The script that called fit (empty in an interactive session)."""
    name = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return str(Path(name).resolve()) if name else ""
