"""One optimizer step: autocast, accumulation, scaling, clipping, the non-finite check.

Everything here stays on the device: the loss and the gradient norm are
tensors written into per-epoch buffers that the loop fetches once per log
interval. A step whose loss or gradient norm is not finite is skipped by the
fused optimizer itself (its ``found_inf`` input), so bad numbers never reach the
weights; the host sees them in the fetched values.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision; fp32 runs without one."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


class StepRecords:
    """Per-step values of one epoch, kept on the device until the loop fetches them.

    One row per step, one column per value: a step costs one stack and one copy.
    ``fetch`` is the only synchronisation of the training path.
    """

    def __init__(self, steps: int, device: torch.device):
        self.steps, self.device = steps, device
        self.start_epoch(0)

    def start_epoch(self, position: int) -> None:
        """Empty buffers for an epoch that starts (or resumes) at step ``position`` of it."""
        self.names: list[str] = []
        self.rows: torch.Tensor | None = None
        self.lrs = [0.0] * self.steps  # host floats, read from the optimizer before each step
        self.written = self.fetched = position

    def write(self, values: dict[str, torch.Tensor], lr: float) -> None:
        if self.rows is None:
            self.names = list(values)
            self.rows = torch.zeros(self.steps, len(self.names), device=self.device, dtype=torch.float32)
        self.rows[self.written] = torch.stack([v.detach().float() for v in values.values()])
        self.lrs[self.written] = lr
        self.written += 1

    def fetch(self, last_step: int, epoch: int) -> list[dict[str, float]]:
        """Records of the steps written since the last fetch; ``last_step`` is the newest one's number."""
        start, stop = self.fetched, self.written
        if self.rows is None or stop <= start:
            return []
        columns = self.rows[start:stop].T.tolist()
        self.fetched = stop
        first_step = last_step - (stop - start) + 1
        return [{"step": first_step + i, "epoch": epoch, "lr": self.lrs[start + i],
                 **{name: column[i] for name, column in zip(self.names, columns)}} for i in range(stop - start)]


class Step:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
        precision: str,
        grad_clip: float,
        grad_accum: int,
        guard_nonfinite: bool = True,
    ):
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.precision = device, precision
        self.grad_clip, self.grad_accum, self.guard_nonfinite = grad_clip, grad_accum, guard_nonfinite
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward, backward and update on one batch; returns 0-dim device tensors to record."""
        size = len(next(iter(batch.values())))
        totals: dict[str, torch.Tensor] = {}
        for micro in _split(batch, min(self.grad_accum, size)):
            with autocast(self.device, self.precision):
                parts = self.loss_fn(self.model, micro)
            loss = parts["loss"]
            share = len(next(iter(micro.values()))) / size
            if share != 1:
                # Weighting by size makes the accumulated gradient that of the whole batch's mean.
                loss = loss * share
                parts = {name: value * share for name, value in parts.items()}
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for name, value in parts.items():
                totals[name] = totals[name] + value.detach() if name in totals else value.detach()

        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip()
        if self.scaler:
            # An overflowing fp16 gradient is routine: the scaler skips that step and lowers the scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.guard_nonfinite:
            # loss + norm is finite exactly when both are; the fused optimizer skips the update on 1.0.
            self.optimizer.found_inf = (totals["loss"] + grad_norm).isfinite().logical_not().float()
            self.optimizer.step()
            del self.optimizer.found_inf
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**totals, "grad_norm": grad_norm}

    def _clip(self) -> torch.Tensor:
        if self.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads, foreach=True)


def _split(batch: dict[str, torch.Tensor], parts: int):
    if parts == 1:
        yield batch
        return
    chunks = {name: t.tensor_split(parts) for name, t in batch.items()}
    for i in range(parts):
        yield {name: c[i] for name, c in chunks.items()}
