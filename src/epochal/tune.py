"""Tuning before a run: the largest batch that fits (``epochal tune batch-size``) and a learning-rate range
test (``epochal tune lr``, ``epochal.tune_lr``).

Both train a few steps through the run's own ``Step`` (precision, accumulation, clipping, the task's loss
and batch preparation) on a copy of the model, with the task built in a temporary folder: no run folder
is left behind and the model handed in keeps its weights.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from epochal.api import pick_device
from epochal.config import RunConfig
from epochal.data import make_batches
from epochal.errors import ConfigError
from epochal.optim import build_adamw
from epochal.resolve import resolve_config
from epochal.state import seed_everything
from epochal.step import Step
from epochal.task import RunContext, Task


@dataclass
class Setup:
    """A task built for tuning: its model's initial weights, training data and loss."""

    task: Task
    config: RunConfig
    device: torch.device
    model: nn.Module
    data: Any

    def step(self, model: nn.Module, lr: float, schedule: Callable[[int], float] = lambda _: 1.0) -> Step:
        train, o = self.config.train, self.config.optim
        optimizer = build_adamw(model, lr, o.weight_decay, o.betas, o.eps, o.decay_all)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return Step(model, self.task.loss, optimizer, scheduler, self.device, train.precision, train.grad_clip,
                    train.grad_accum, False, getattr(self.task, "prepare_batch", None))


def _set_up(task: str | Task, config: Any, overrides: dict | None, folder: str) -> Setup:
    task_obj, resolved = resolve_config(task, config, overrides)
    device = pick_device(resolved.train.device)
    if resolved.train.precision == "amp":
        from epochal.step import amp_precision

        resolved.train.precision = amp_precision(device)
    seed_everything(resolved.train.seed, resolved.train.deterministic)
    built = task_obj.build(resolved.task, RunContext(Path(folder), device, resolved.train.seed, resolved))
    return Setup(task_obj, resolved, device, built.model, built.train_data)


# ------------------------------------------------------------------------------------------- batch size
def _peak_memory(setup: Setup, size: int) -> float | None:
    """MiB the GPU held at the peak of two steps with batches of ``size`` (0.0 on a CPU); None: out of memory."""
    device = setup.device
    model = copy.deepcopy(setup.model).to(device)
    step = setup.step(model, setup.config.optim.lr)
    batches = make_batches(setup.data, device, size, setup.config.train.seed, True, setup.config.train.num_workers)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    fitted = True
    try:
        batch = next(iter(batches.epoch(0)))
        for _ in range(2):  # the second step holds the optimizer's state too
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        fitted = False
    del model, step, batches
    gc.collect()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.empty_cache()
        return peak if fitted else None
    return 0.0 if fitted else None


def _fit_line(peak: float | None) -> str:
    if peak is None:
        return "out of memory"
    return f"fits ({peak:.0f} MiB at the peak)" if peak else "fits"


def _examples(setup: Setup) -> int | None:
    """Training examples, where the data knows (no batch can be larger); None for a stream."""
    return getattr(make_batches(setup.data, setup.device, 1, 0, False), "n", None)


def find_batch_size(task: str | Task, config: Any = None, overrides: dict | None = None,
                    most: int | None = None, log: Callable[[str], None] = print) -> tuple[int, float]:
    """The largest batch size whose steps fit in memory (doubling from train.batch_size, then bisection),
    never above ``most`` nor the number of training examples; returns it with its peak memory in MiB."""
    with tempfile.TemporaryDirectory(prefix="epochal-tune-") as folder:
        setup = _set_up(task, config, overrides, folder)
        if setup.device.type != "cuda" and most is None:
            raise ConfigError("tune batch-size: on a CPU nothing runs out of memory (the kernel ends the process "
                              "instead); allowed: --max N, or a CUDA device")
        limit = min((x for x in (most, _examples(setup)) if x), default=None)
        size = max(1, min(setup.config.train.batch_size, limit or setup.config.train.batch_size))
        fits: tuple[int, float] | None = None
        too_big: int | None = None
        while too_big is None:
            peak = _peak_memory(setup, size)
            log(f"batch {size}: {_fit_line(peak)}")
            if peak is None:
                too_big = size
            else:
                fits = (size, peak)
                if limit is not None and size >= limit:
                    break
                size = size * 2 if limit is None else min(size * 2, limit)
        low = fits[0] if fits else 0
        while too_big is not None and too_big - low > 1:
            middle = (low + too_big) // 2
            peak = _peak_memory(setup, middle)
            log(f"batch {middle}: {_fit_line(peak)}")
            if peak is None:
                too_big = middle
            else:
                low, fits = middle, (middle, peak)
        if fits is None:
            raise ConfigError("tune batch-size: even a batch of one example runs out of memory; allowed: a smaller "
                              "model or a device with more memory")
        return fits


# ---------------------------------------------------------------------------------------- learning rate
@dataclass
class LRTest:
    lrs: list[float]
    losses: list[float]  # smoothed (an exponential average with bias correction)
    suggestion: float  # the learning rate where the smoothed loss falls fastest
    plot: Path | None = None

    def to_json(self) -> dict:
        return {"suggestion": self.suggestion, "lrs": self.lrs, "losses": self.losses,
                "plot": str(self.plot) if self.plot else None}


SMOOTHING = 0.9  # weight of the running average of the loss: single steps are noisy
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this many times its lowest value


def lr_range_test(setup: Setup, model: nn.Module, start: float, end: float, steps: int) -> LRTest:
    """Train ``model`` for up to ``steps`` steps with the learning rate rising exponentially from ``start``
    to ``end``; the model's weights are put back afterwards."""
    if not 0 < start < end:
        raise ConfigError(f"tune lr: the range {start:g}..{end:g} is empty; allowed: 0 < start < end")
    if steps < 10:
        raise ConfigError(f"tune lr: {steps} steps are too few for a range test; allowed: >= 10")
    saved = copy.deepcopy(model.state_dict())
    device = setup.device
    model.to(device).train()
    growth = (end / start) ** (1 / (steps - 1))
    step = setup.step(model, start, lambda k: growth ** k)
    batches = make_batches(setup.data, device, setup.config.train.batch_size, setup.config.train.seed,
                           setup.config.train.drop_last, setup.config.train.num_workers)
    lrs: list[float] = []
    raw: list[torch.Tensor] = []
    smoothed: list[float] = []
    try:
        epoch = 0
        while len(lrs) < steps and not _diverged(smoothed):
            for batch in batches.epoch(epoch):
                lrs.append(step.optimizer.param_groups[0]["lr"])
                raw.append(step(batch)["loss"].detach())
                if len(lrs) % 10 == 0 or len(lrs) == steps:  # a host read every 10 steps, to stop once diverged
                    smoothed += _smooth([float(x) for x in torch.stack(raw[len(smoothed):]).tolist()], smoothed)
                    if _diverged(smoothed) or len(lrs) == steps:
                        break
            epoch += 1
    finally:
        model.load_state_dict(saved)
    count = len(smoothed)
    return LRTest(lrs[:count], smoothed, _steepest(lrs[:count], smoothed))


def _smooth(new: list[float], done: list[float]) -> list[float]:
    out, average, k = [], 0.0, len(done)
    if done:  # undo the bias correction of the last value to continue the running average
        average = done[-1] * (1 - SMOOTHING**k)
    for value in new:
        k += 1
        average = SMOOTHING * average + (1 - SMOOTHING) * (value if math.isfinite(value) else float("inf"))
        out.append(average / (1 - SMOOTHING**k))
    return out


def _diverged(smoothed: list[float]) -> bool:
    return bool(smoothed) and (not math.isfinite(smoothed[-1]) or smoothed[-1] > DIVERGED * min(smoothed))


def _steepest(lrs: list[float], losses: list[float]) -> float:
    """The learning rate where the loss falls fastest against log(lr), before its lowest point."""
    lowest = min(range(len(losses)), key=losses.__getitem__)
    if lowest < 2:
        return lrs[lowest] / 10
    slopes = [(losses[i + 1] - losses[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1]) for i in range(1, lowest)]
    return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]


def write_lr_test(test: LRTest, folder: Path, name: str) -> LRTest:
    """<folder>/<name>.json, and <name>.png (loss against learning rate) where matplotlib is installed."""
    from epochal.io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    try:
        from epochal.plots import pyplot

        plt = pyplot()
    except Exception:  # plots are an extra: the numbers are written anyway
        plt = None
    if plt is not None:
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(test.lrs, test.losses)
        axes.axvline(test.suggestion, color="tab:red", linestyle="--", label=f"suggested {test.suggestion:.2g}")
        axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=name)
        axes.legend()
        test.plot = folder / f"{name}.png"
        figure.savefig(test.plot, dpi=120, bbox_inches="tight")
        plt.close(figure)
    atomic_write_text(folder / f"{name}.json", json.dumps(test.to_json(), indent=1) + "\n")
    return test


def tune_task_lr(task: str | Task, config: Any = None, overrides: dict | None = None, start: float = 1e-7,
                 end: float = 10.0, steps: int = 200, out: str | Path = "results/tune") -> LRTest:
    """``epochal tune lr``: the range test on a task's model and data."""
    with tempfile.TemporaryDirectory(prefix="epochal-tune-") as folder:
        setup = _set_up(task, config, overrides, folder)
        test = lr_range_test(setup, setup.model, start, end, steps)
    return write_lr_test(test, Path(out), f"{setup.task.name}-lr")


def tune_lr(model: nn.Module, train_data: Any, loss_fn: Callable, *, config: Any = None, start: float = 1e-7,
            end: float = 10.0, steps: int = 200, out: str | Path | None = None) -> LRTest:
    """A learning-rate range test on your own model and data (``epochal.fit``'s arguments); the model keeps
    its weights. ``out``: also write the curve (png, json) there."""
    from epochal.script import ScriptTask

    task = ScriptTask(model, train_data, loss_fn, None, None, None, None, None)
    task_obj, resolved = resolve_config(task, config, {"task.script": "tune_lr"})
    setup = Setup(task_obj, resolved, pick_device(resolved.train.device), model, train_data)
    test = lr_range_test(setup, model, start, end, steps)
    return write_lr_test(test, Path(out), "lr") if out is not None else test
