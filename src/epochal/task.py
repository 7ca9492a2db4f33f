"""The Task protocol and the lazy task registry: the core's side of a task.

A task is the research-specific part of a run: it builds the model and data,
computes the loss of a batch and evaluates the model. The core never imports a
task module; it looks tasks up here by name (the catalog, the ``epochal.tasks``
entry-point group, or an import path), importing on first use. The built-in tasks
(``epochal.tasks``, ``epochal.scratch``) sit on top of the core like any other
package's tasks.

Writing a task::

    @dataclass
    class MyConfig:
        hidden: int = 64   # width of the MLP: small enough for a CPU

    class MyTask(Task):
        name = "my-task"
        summary = "one line for `epochal tasks`"
        Config = MyConfig
        defaults = {"train": {"max_epochs": 10}}   # core settings this task prefers
        metrics = ("eval_mse",)    # what evaluate() returns: configs naming others are refused up front

        def build(self, cfg, run): ...     # -> Built
        def loss(self, model, batch): ...  # -> {"loss": total, **components}
        def evaluate(self, model, ctx): ...  # -> {"metric": float}

    register_task(MyTask)
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from epochal.errors import ConfigError
from epochal.catalog import BUILTIN_TASKS

if TYPE_CHECKING:  # torch and numpy load with the first task, not with `epochal tasks`
    import numpy as np
    import torch
    from torch import nn

    from epochal.callbacks.base import Callback
    from epochal.config import RunConfig


@dataclass
class Built:
    """What a task hands the loop."""

    model: nn.Module
    # Training examples: tensors (a tensor, or a tuple/list/dict of equal-length tensors;
    # moved to the device and batched by the loop), a map-style Dataset (read through
    # a DataLoader, for data that does not fit on the device), a DataLoader, or an
    # IterableDataset (see data.py).
    train_data: Any
    # Anything evaluate() and test() need: held-out data, a graph, an automaton.
    eval_context: Any = None
    # Optional factories: (trainable params) -> Optimizer and (optimizer, total_steps) -> LRScheduler.
    # None: AdamW and the [schedule] section's warmup + decay.
    optimizer: Callable[[list], torch.optim.Optimizer] | None = None
    scheduler: Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler] | None = None


@dataclass
class RunContext:
    """Where and how a run happens, for tasks that write files or draw random numbers."""

    dir: Path
    device: torch.device
    seed: int
    config: "RunConfig"
    # A run folder whose saved data files (the flow task's normalisation) the build reads back instead of
    # fitting them again: the run's own folder on resume, the loaded one in load_run; None for a new run.
    saved: Path | None = None

    def numpy_rng(self, purpose: str) -> np.random.Generator:
        """A generator seeded by (seed, purpose): data made with it does not depend on call order."""
        import numpy as np

        return np.random.default_rng([self.seed, *purpose.encode()])

    def torch_generator(self, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch generator seeded by (seed, purpose)."""
        import torch

        seed = int(self.numpy_rng(purpose).integers(2**62))
        return torch.Generator(device=device).manual_seed(seed)


class Task:
    """Base class of tasks. Subclasses set the class attributes and the three methods."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type]
    # Nested overrides of the core config this task prefers, applied before the
    # user's file and flags, e.g. {"train": {"batch_size": 64}, "gate": {...}}.
    defaults: ClassVar[dict] = {}
    # Names of the metrics evaluate() returns. Settings that name a metric (early_stop.metric,
    # checkpoint.best_metric, gate thresholds) are checked against them before a run folder
    # exists; empty: checked at the first evaluation instead.
    metrics: ClassVar[tuple[str, ...]] = ()
    # The metric of evaluate() that is the task's own loss on its validation split: each epoch line of
    # history.jsonl carries it as val_loss. Empty: validation_loss() computes it (or there is none).
    val_loss_metric: ClassVar[str] = ""

    def validate(self, config: "RunConfig") -> None:
        """Raise ConfigError for a combination of settings this task cannot run."""

    def build(self, cfg: Any, run: RunContext) -> Built:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> Any:
        """A loss tensor, a (sum, count) pair, or {"loss": ..., **components} of either: on the device,
        no host sync. A mean is weighted by examples under accumulation; a pair is summed and divided
        by the whole batch's count (exact for losses averaged over masked tokens)."""
        raise NotImplementedError

    # Optional: prepare_batch(batch) -> batch, called once per optimizer step on the whole batch
    # before it is split into micro-batches: where per-batch random draws and normalisers belong,
    # so that grad_accum does not change them.

    def evaluate(self, model: nn.Module, ctx: Any) -> dict[str, float]:
        """Metrics on held-out data; called in eval mode under no_grad, EMA weights swapped in."""
        raise NotImplementedError

    def test(self, model: nn.Module, ctx: Any) -> dict[str, float] | None:
        """Final metrics on the test split, run on the last and on the best weights. None: no test."""
        return None

    def validation_loss(self, model: nn.Module, ctx: Any) -> float | None:
        """The task's training loss on its validation split, for history's val_loss when no metric is it
        (``val_loss_metric``); called like evaluate(). None: the task has none."""
        return None

    # A task that trains without the core loop (the NumPy reference trainer) sets this and implements
    # own_loop instead of build/loss/evaluate; it runs in one process.
    trains_itself: ClassVar[bool] = False

    def own_loop(self, config: "RunConfig", folder: Any, log: Callable[[str], None]) -> dict:
        """Train the whole run into ``folder`` (a RunFolder) and return result.json's content (only for a
        task that ``trains_itself``)."""
        raise NotImplementedError

    def callbacks(self, cfg: Any, run: RunContext) -> list["Callback"]:
        """Task-specific policy (e.g. saving attention maps); none by default."""
        return []

    # Optional hooks for throughput logging and plots (epochal.loggers, epochal.plots).

    def tokens_per_example(self, cfg: Any) -> int | None:
        """Tokens one training example holds, for tokens/s; None: the task has no tokens."""
        return None

    def flops_per_example(self, cfg: Any, model: nn.Module) -> float | None:
        """Training FLOPs (forward and backward) of one example, for MFU on GPUs; None: unknown."""
        return None

    def figures(self, run_dir: Path, result: dict) -> dict[str, Any]:
        """This task's own matplotlib figures of a run, by file stem (saved as plots/<stem>.png).

        Drawn from the run folder alone (result.json, files the task wrote), after training
        and again by ``epochal report``; get pyplot from ``epochal.plots.pyplot()``.
        """
        return {}


_REGISTRY: dict[str, type[Task] | str] = {name: entry.target for name, entry in BUILTIN_TASKS.items()}


def register_task(task: type[Task], name: str | None = None) -> type[Task]:
    """Make a task available to fit() and the CLI under its name."""
    _REGISTRY[name or task.name] = task
    return task


ENTRY_POINT_GROUP = "epochal.tasks"  # packages advertise their tasks here: name = "package.module:TaskClass"


def _importable(target: type[Task] | str) -> bool:
    if not isinstance(target, str):
        return True
    return importlib.util.find_spec(target.split(":")[0]) is not None


def plugin_tasks() -> dict[str, str]:
    """Tasks other packages advertise through the ``epochal.tasks`` entry-point group (not imported)."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    registered = [name for name, target in _REGISTRY.items() if _importable(target)]
    return sorted({*registered, *plugin_tasks()})


def get_task(name: str) -> Task:
    """The task registered under ``name``, advertised under it by a package, or at the import path
    ``package.module:TaskClass``; a ConfigError naming the choices otherwise.

    The instance's ``registered_as`` is the name it was found by: what config.toml records,
    so that a resume in a new process finds the same class.
    """
    target = _REGISTRY.get(name) or plugin_tasks().get(name) or (name if ":" in name else None)
    if target is None or not _importable(target):
        raise ConfigError(f"task: unknown task {name!r}; allowed: {', '.join(task_names())}, or an import path "
                          "package.module:TaskClass")
    if isinstance(target, str):
        module_name, _, class_name = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"task: cannot import {target!r} ({err}); allowed: package.module:TaskClass") from None
        if not (isinstance(target, type) and issubclass(target, Task)):
            raise ConfigError(f"task: {name!r} is not a subclass of epochal.Task")
        _REGISTRY[name] = target
    task = target()
    task.registered_as = name
    return task
