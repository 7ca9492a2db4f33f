"""``train.cuda_graphs``: the whole step captured once into a CUDA graph and replayed.

A small model's step on a GPU is bound by launching its kernels, not by running them:
a graph launches the forward, the backward, the clipping, the non-finite check and the
optimizer's update in one call. What the graph reads is fixed memory:

- the batch is copied into static input buffers before each replay;
- the learning rate lives in a tensor per parameter group that the host fills from the
  scheduler's float before each step, so the schedule is not baked into the graph (the
  eager warm-up steps read it from there too, so they compute exactly as replays do);
- the gradients stay allocated between replays (the graph writes them, never adds to them);
- the recorded values (loss, grad norm) are copied out of the graph's outputs after each replay.

The first ``WARMUP_STEPS`` steps run eagerly on a side stream (real training steps: the
optimizer creates its state there), then the step is captured. Loading a checkpoint
(a resume or a roll-back) replaces the optimizer's state tensors and a forced resume may
change its hyperparameters, which the graph holds as constants: ``release`` drops the
graph and the next step captures it again.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from epochal.errors import ConfigError
from epochal.step import Step
from epochal.tree import leaves, tree_map

WARMUP_STEPS = 3  # eager steps before the capture: optimizer state, cuBLAS handles and autotuning settle


def check_capturable(device: torch.device, precision: str, grad_accum: int, world_size: int,
                     optimizer: torch.optim.Optimizer) -> None:
    """One line for each setting a captured step cannot honour (yet)."""
    setting = "train.cuda_graphs"
    if device.type != "cuda":
        raise ConfigError(f"{setting}: CUDA graphs need a CUDA device, this run is on {device.type}; "
                          "allowed here: false")
    if precision == "fp16":
        raise ConfigError(f"{setting}: fp16's loss scaling decides on the host; allowed with CUDA graphs: "
                          "train.precision = bf16 or fp32")
    if grad_accum > 1:
        raise ConfigError(f"{setting}: not combined with train.grad_accum = {grad_accum} yet; allowed: grad_accum = 1")
    if world_size > 1:
        raise ConfigError(f"{setting}: not under torchrun (DDP) yet; allowed: one process")
    if "capturable" not in optimizer.defaults:
        raise ConfigError(f"{setting}: {type(optimizer).__name__} cannot run inside a CUDA graph (it has no "
                          "capturable mode); allowed: torch's Adam, AdamW, SGD and the like")


def check_fixed_shapes(steps_per_epoch: int | None, examples: int | None, batch_size: int, drop_last: bool) -> None:
    """A last partial batch of an epoch would change the step's shapes: refused before training."""
    if steps_per_epoch is None or examples is None or drop_last or examples % batch_size == 0:
        return
    raise ConfigError(f"train.cuda_graphs: the last batch of each epoch holds {examples % batch_size} examples, "
                      f"not {batch_size}, and a graph replays fixed shapes; allowed: train.drop_last = true, "
                      f"or a dataset size divisible by train.batch_size")


def _shapes(batch: Any) -> list[tuple]:
    return [(tuple(leaf.shape), leaf.dtype) for leaf in leaves(batch) if isinstance(leaf, torch.Tensor)]


class CapturedStep:
    """Called like the Step it wraps: one optimizer step, returning the device values to record."""

    def __init__(self, step: Step):
        self.step = step
        self.device = step.device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_left = WARMUP_STEPS
        self.static_batch: Any = None
        self.names: list[str] = []  # the recorded values, in the order of static_values
        self.static_values: torch.Tensor | None = None  # the graph's output: the recorded values, stacked
        self.shapes: list[tuple] = []
        self.lrs: list[torch.Tensor] = []
        self.captures = 0  # how many times the step was captured (once, plus once per checkpoint load)

    def release(self) -> None:
        """Forget the graph (a checkpoint was loaded): the next steps warm up and capture again."""
        self.graph, self.static_batch, self.static_values = None, None, None
        self.eager_left = WARMUP_STEPS
        self.step.optimizer.zero_grad(set_to_none=True)

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]:
        groups = self.step.optimizer.param_groups
        if self.graph is None:
            for group in groups:
                group["capturable"] = True  # also after a checkpoint load brought back its own setting
        if not self.lrs:
            self.lrs = [torch.tensor(float(group["lr"]), device=self.device) for group in groups]
        for lr, group in zip(self.lrs, groups):
            lr.fill_(group["lr"])  # warm-up steps read the rate from the same tensor: they compute as replays do
        if self.graph is None and self.eager_left > 0:
            self.eager_left -= 1
            return self._eager(batch)
        if self.graph is None:
            self._capture(batch)
        elif _shapes(batch) != self.shapes:
            raise ConfigError(f"train.cuda_graphs: the batch changed from {self.shapes} to {_shapes(batch)}; a graph "
                              "replays fixed shapes; allowed: batches of one shape (train.drop_last = true)")
        for static, leaf in zip(leaves(self.static_batch), leaves(batch)):
            static.copy_(leaf, non_blocking=True)
        self.graph.replay()
        self.step.scheduler.step()
        # One copy out of the graph's outputs, which the next replay overwrites.
        return dict(zip(self.names, self.static_values.clone().unbind()))

    def _eager(self, batch: Any) -> dict[str, torch.Tensor]:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self._rates_in_tensors():
            values = self.step.watched_update(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.step.advance()
        return values

    @contextlib.contextmanager
    def _rates_in_tensors(self):
        """Inside: each parameter group's learning rate is its tensor (what a graph reads); after: the float
        again, which the scheduler, the records and the checkpoints work with."""
        groups = self.step.optimizer.param_groups
        rates = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.lrs):
            group["lr"] = lr
        try:
            yield
        finally:
            for group, rate in zip(groups, rates):
                group["lr"] = rate

    def _capture(self, batch: Any) -> None:
        step, optimizer = self.step, self.step.optimizer
        self.static_batch = tree_map(torch.clone, batch)
        self.shapes = _shapes(batch)
        optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients it writes
        graph = torch.cuda.CUDAGraph()
        generator = torch.cuda.default_generators[self.device.index if self.device.index is not None
                                                  else torch.cuda.current_device()]
        before = generator.clone_state()
        try:
            # thread_local: a checkpoint or tracker thread touching CUDA meanwhile does not void the capture
            with self._rates_in_tensors(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                values = step.update(self.static_batch)
                self.names = list(values)
                self.static_values = torch.stack(list(values.values()))  # one copy out a step, not one a value
        except RuntimeError as error:
            # A capture that fails leaves torch's CUDA generator in capture mode: every later random draw of
            # this process would fail. Its state from before the capture is put back.
            generator.graphsafe_set_state(before)
            first = next((line for line in str(error).splitlines() if line.strip()), "capture failed")
            raise ConfigError(f"train.cuda_graphs: the step could not be captured ({first.strip()}); something in "
                              "the step needs the host (.item(), a Python if on a tensor, a CPU tensor); allowed: "
                              "train.cuda_graphs = false") from error
        self.graph = graph
        self.captures += 1
