"""What a callback sees of a training run: a narrow, read-only view.

Every event hands callbacks a ``RunView`` (the loop, its events and the decisions
callbacks return are described once, in ``loop.py``). A callback reads the run
through it and changes the run's course only by returning decisions
(``epochal.decisions``); assigning to the view or its ``state`` raises. The
built-in callbacks, loggers and the tasks' own callbacks use nothing else, so a
callback of yours can do whatever theirs do.

    run.state            where training stands (read-only): epoch, step, batch_in_epoch, epoch_steps,
                         metrics (the latest evaluation), curves, eval_epochs, eval_steps, status,
                         stop_reason, stopped, val_loss, micro_batches, train_seconds,
                         epoch_train_loss(), epoch_grad_norm()
    run.config           the resolved RunConfig (treat it as read-only)
    run.model            the model being trained (an EMA reads its weights)
    run.device           where it trains
    run.dir              the run folder (a callback's own files go there; under torchrun rank 0's)
    run.folder           the run folder's records: history.jsonl and result.json (FolderWriter writes them)
    run.eval_context     the task's held-out data, as evaluate() receives it
    run.steps_per_epoch  optimizer steps an epoch (None for data of unknown length)
    run.is_main          under torchrun, whether this is rank 0 (the one that writes and prints)
    run.lr               the first parameter group's learning rate now
    run.data_wait_seconds  host time spent waiting for batches so far
    run.compile_seconds  time spent compiling the step so far (train.compile)
    run.data_order_sha256(epoch)  the hash of an epoch's batch order (None where unknown)
    run.evaluating()     a block that evaluates with the evaluation weights (EMA), then restores everything
    run.print(line)      a console line (rank 0's)
    run.result()         result.json's content as it stands
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from epochal.config import RunConfig
    from epochal.run_folder import RunFolder
    from epochal.state import TrainState

# The parts of TrainState a callback may read.
STATE_FIELDS = frozenset({
    "epoch", "step", "batch_in_epoch", "epoch_steps", "metrics", "curves", "eval_epochs", "eval_steps", "status",
    "stop_reason", "stopped", "val_loss", "micro_batches", "train_seconds", "epoch_train_loss", "epoch_grad_norm",
})


class ReadOnlyError(AttributeError):
    pass


class StateView:
    """TrainState, read-only: a callback asks for a change of course with a decision instead."""

    __slots__ = ("_state",)

    def __init__(self, state: TrainState):
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> Any:
        if name not in STATE_FIELDS:
            raise AttributeError(f"run.state has no {name!r}; readable: {', '.join(sorted(STATE_FIELDS))}")
        return getattr(self._state, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ReadOnlyError(f"run.state.{name}: the run's state is read-only to callbacks; return a decision "
                            "(Save, Stop, RollBack) to change the run's course")


class RunView:
    """The run as its callbacks see it (the module docstring lists what it holds)."""

    __slots__ = ("_training", "state")

    def __init__(self, training: Any):  # a training.Training (typed loosely: training.py imports this module)
        object.__setattr__(self, "_training", training)
        object.__setattr__(self, "state", StateView(training.state))

    def __setattr__(self, name: str, value: Any) -> None:
        raise ReadOnlyError(f"run.{name}: the run is read-only to callbacks; return a decision (Save, Stop, "
                            "RollBack) to change its course")

    @property
    def config(self) -> RunConfig:
        return self._training.config

    @property
    def model(self) -> torch.nn.Module:
        return self._training.model

    @property
    def device(self) -> torch.device:
        return self._training.device

    @property
    def dir(self) -> Path:
        return self._training.folder.path

    @property
    def folder(self) -> RunFolder:
        return self._training.folder

    @property
    def eval_context(self) -> Any:
        return self._training.eval_context

    @property
    def steps_per_epoch(self) -> int | None:
        return self._training.steps_per_epoch

    @property
    def is_main(self) -> bool:
        return self._training.world.main

    @property
    def lr(self) -> float:
        return self._training.optimizer.param_groups[0]["lr"]

    @property
    def data_wait_seconds(self) -> float:
        return self._training.batches.wait_seconds

    @property
    def compile_seconds(self) -> float:
        watch = self._training.device_step.watch
        return 0.0 if watch is None else watch.seconds

    def data_order_sha256(self, epoch: int) -> str | None:
        return self._training.batches.order_sha256(epoch)

    def evaluating(self) -> contextlib.AbstractContextManager:
        return self._training.evaluating()

    def print(self, line: str) -> None:
        self._training.printer(line)

    def result(self) -> dict:
        return self._training.result()
