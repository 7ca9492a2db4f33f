"""``train.compile``: torch.compile of what runs every step, and a watch on what compiling costs.

The compiled function is the loss function with the model under it (forward and loss
in one graph); the model itself stays the eager module, so checkpoints keep its own
parameter names and a run may switch compile on or off when it resumes. The optimizer
is not compiled: epochal's fused AdamW is already one multi-tensor kernel a step.

Compiling happens at the first step and again whenever a guard fails (a new batch
shape, say). ``CompileWatch`` hears torch's compile start and end, sums the seconds so
that the throughput meter can leave them out of step time, counts the compiles after
the first step (recompiles), and warns once when shapes keep changing.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import torch

from epochal.errors import EpochalError
from epochal.tree import leaves

class CompileError(EpochalError):
    """torch.compile failed on the step: the run stops, nothing is saved after it."""


def compile_loss(loss_fn: Callable, mode: str) -> Callable:
    """``loss_fn`` compiled in ``mode`` ("default" is torch's own default mode)."""
    return torch.compile(loss_fn, mode=None if mode == "default" else mode)


def _first_line(error: BaseException) -> str:
    """The first line of what went wrong: a backend's own error rather than dynamo's wrapper around it."""
    inner = getattr(error, "inner_exception", None) or error
    first = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def _shapes(batch: Any) -> tuple:
    return tuple(tuple(leaf.shape) for leaf in leaves(batch) if isinstance(leaf, torch.Tensor))


class CompileWatch:
    """Seconds spent compiling, compiles after the first step, and one warning when shapes keep changing."""

    def __init__(self, mode: str = "default"):
        # reduce-overhead replays CUDA graphs whose outputs the next replay overwrites: each step is marked,
        # and the values a step records are copied out (Step.own_values).
        self.marks_steps = mode == "reduce-overhead"
        self.seconds = 0.0  # total seconds inside torch's compiler, host wall time
        self.recompiles = 0  # compiles that started after the first step
        self.steps = 0
        self.first_shapes: tuple | None = None
        self.warned = False
        self._started: float | None = None
        self._compiled_this_step = False

    def _start(self, args=None) -> None:
        self._started = time.perf_counter()
        # A new graph for dynamo is a (re)compile; recording CUDA graphs (reduce-overhead) or a deferred
        # backward is part of a compile already counted.
        trigger = getattr(getattr(args, "callback_trigger", None), "name", "DYNAMO")
        self._compiled_this_step = self._compiled_this_step or trigger == "DYNAMO"

    def _end(self, _args=None) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def call(self, fn: Callable, batch: Any) -> Any:
        """Run one step's compiled work; a compiler failure becomes one line with the way out."""
        self._compiled_this_step = False
        handler = torch._dynamo.callback.callback_handler  # heard only while this step runs: no global leftovers
        handler.register_start_callback(self._start)
        handler.register_end_callback(self._end)
        try:
            if self.marks_steps:
                torch.compiler.cudagraph_mark_step_begin()
            result = fn()
        except torch._dynamo.exc.TorchDynamoException as error:
            raise CompileError(f"train.compile: torch.compile failed: {_first_line(error)}; "
                               "run with train.compile = \"off\" to train without it") from error
        finally:
            handler.remove_start_callback(self._start)
            handler.remove_end_callback(self._end)
        if self.steps == 0:
            self.first_shapes = _shapes(batch)
        elif self._compiled_this_step:
            self.recompiles += 1
            self._warn(batch)
        self.steps += 1
        return result

    def _warn(self, batch: Any) -> None:
        if self.warned:
            return
        self.warned = True
        shapes = _shapes(batch)
        cause = (f"the batch shapes changed ({self.first_shapes} at the first step, {shapes} now); if only the "
                 "last batch of an epoch is smaller, train.drop_last = true keeps every step the same size"
                 if shapes != self.first_shapes else "a guard of the compiled step failed (a Python value or "
                 "a module's mode it reads changed)")
        warnings.warn(f"train.compile: recompiled {self.recompiles} times after the first step: {cause}",
                      stacklevel=2)
