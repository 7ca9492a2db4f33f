"""One optimizer step: autocast, accumulation, scaling, clipping, the non-finite check.

Everything here stays on the device: the loss and the gradient norm are
tensors written into per-epoch buffers that the loop fetches once per log
interval. A step whose loss or gradient norm is not finite is skipped by the
fused optimizer itself (its ``found_inf`` input), so bad numbers never reach the
weights; the host sees them in the fetched values.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Union

import torch
from torch import nn

from epochal import faults
from epochal.compiling import CompileWatch
from epochal.distributed import ALONE, World
from epochal.errors import ConfigError
from epochal.sharding import full
from epochal.tree import batch_size, split

LossFn = Callable[[nn.Module, Any], Any]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_precision(device: torch.device) -> str:
    """What ``precision = "amp"`` means on ``device``: bf16 where the device computes it natively (same range
    as fp32, so no loss scaling), else fp16 with a GradScaler. CPUs autocast to bf16."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if device.type == "cpu" else "fp16"


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision; fp32 runs without one."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


class StepRecords:
    """Per-step values kept on the device until the loop fetches them.

    A step only keeps its 0-dim tensors (no kernel: small ops cost several microseconds
    each in a step's shadow); ``fetch`` stacks them all at once and is the only
    synchronisation of the training path. The loop fetches at least every ``log_every``
    steps, so at most that many rows wait.
    """

    def __init__(self):
        self.names: list[str] = []
        self.rows: list[tuple[torch.Tensor, ...]] = []  # one row of detached values per step since the last fetch
        self.lrs: list[float] = []  # host floats, read from the optimizer before each step

    @property
    def pending(self) -> int:
        return len(self.rows)

    def write(self, values: dict[str, torch.Tensor], lr: float) -> None:
        if not self.names:
            self.names = list(values)
        self.rows.append(tuple(values.values()))
        self.lrs.append(lr)

    def fetch(self, last_step: int, epoch: int,
              agree: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[dict[str, float]]:
        """Records of the steps written since the last fetch; ``last_step`` is the newest one's number.
        ``agree`` (under torchrun) turns this rank's rows into the values every rank records."""
        count, lrs = self.pending, self.lrs
        if count == 0:
            return []
        rows = torch.stack([value for row in self.rows for value in row]).detach().float().view(count, -1)
        columns = (rows if agree is None else agree(rows)).T.tolist()
        self.discard()
        first_step = last_step - count + 1
        return [{"step": first_step + i, "epoch": epoch, "lr": lrs[i],
                 **{name: column[i] for name, column in zip(self.names, columns)}} for i in range(count)]

    def discard(self) -> None:
        """Forget unfetched values (a rollback or resume replaces the steps they belong to)."""
        self.rows, self.lrs = [], []


Loss = Union[torch.Tensor, tuple]  # a mean over the micro-batch's examples, or a (sum, count) pair


def loss_parts(returned: Any) -> dict[str, Loss]:
    """A loss function's result as {"loss": ..., **components}; each a tensor or a (sum, count) pair."""
    if isinstance(returned, torch.Tensor) or _is_pair(returned):
        return {"loss": returned}
    if isinstance(returned, dict) and "loss" in returned:
        return returned
    raise TypeError(f"the loss function returned {type(returned).__name__}; allowed: a loss tensor, a "
                    "(sum, count) pair, or a dict with a 'loss' entry")


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor)


def nonfinite_guard(nan_policy: str, guard_nonfinite: bool | None, optimizer: torch.optim.Optimizer) -> bool:
    """Whether a non-finite step is skipped on the device: ``train.guard_nonfinite`` as set, else only under
    nan_policy "skip", the one policy that needs it. Only fused optimizers read the flag that skips a step:
    "skip" with another is refused, and an explicit guard does nothing with one."""
    fused = bool(optimizer.defaults.get("fused"))
    if nan_policy == "skip" and not fused:
        raise ConfigError(f"train.nan_policy: 'skip' needs an optimizer that skips a step on the device (fused "
                          f"AdamW/Adam/SGD), not {type(optimizer).__name__}; allowed: stop, rollback")
    wanted = nan_policy == "skip" if guard_nonfinite is None else guard_nonfinite
    return wanted and fused


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
        guard_nonfinite: bool = False,
        prepare: Callable[[Any], Any] | None = None,
        world: World = ALONE,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
        watch: CompileWatch | None = None,
    ):
        self.model, self.loss_fn, self.prepare = model, loss_fn, prepare
        # Under torchrun: DDP's no_sync, so only the last micro-batch's backward all-reduces the gradients.
        self.world, self.no_sync = world, no_sync
        self.watch = watch  # with train.compile: compile seconds, recompiles, a compiler failure as one line
        # Values a compiled CUDA graph (reduce-overhead) returns are overwritten by its next replay: copy them.
        self.own_values = watch is not None and watch.marks_steps
        self.agree_memory = False  # under torchrun with train.microbatch = "auto" (set by the run)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.precision = device, precision
        self.grad_clip, self.grad_accum = grad_clip, grad_accum
        self.micro_batches = 1  # per accumulation chunk; more after running out of memory (train.microbatch)
        self.oom_above = faults.oom_above()  # a test's stand-in for a GPU that is too small
        self.guard_nonfinite = guard_nonfinite  # resolved by nonfinite_guard: only a fused optimizer reads the flag
        # The guard's flag and the unit scale its check multiplies by: allocated once, reused every step.
        self.found_inf = torch.zeros((), device=device)
        self.unit_scale = torch.ones((), device=device)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch``; returns 0-dim device tensors to record."""
        values = self.watched_update(batch)
        self.advance()
        return values

    def watched_update(self, batch: Any) -> dict[str, torch.Tensor]:
        """``update``, through the compile watch when the step is compiled."""
        return self.update(batch) if self.watch is None else self.watch.call(lambda: self.update(batch), batch)

    def advance(self) -> None:
        """After an update: the next step's learning rate (on the host), and the gradients let go."""
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, batch: Any) -> dict[str, torch.Tensor]:
        """Forward, backward and the optimizer's update on one batch, all on the device: the part of a
        step a CUDA graph can hold (graphs.py). Returns 0-dim device tensors to record.

        With accumulation, a mean loss is weighted by each micro-batch's share of the
        examples, and a (sum, count) loss is summed and divided by the whole batch's
        count: either way the gradient is the whole batch's.
        """
        if self.prepare is not None:
            batch = self.prepare(batch)  # per-batch draws happen once, on the whole batch
        micros = self._micro_batches(batch)
        if self.agree_memory:
            sums, counts = self._accumulate_agreed(micros)
        else:
            sums, counts = self._accumulate(micros)
        least = 1  # a count is at least one example
        if counts and self.world.size > 1:
            counts, least = self.world.global_counts(counts), 1 / self.world.size
        if "loss" in counts:
            grads = [p.grad for p in self.params if p.grad is not None]
            torch._foreach_div_(grads, counts["loss"].float().clamp_min(least))
        totals = {name: sums[name] / counts[name].clamp_min(least) if name in counts else sums[name] for name in sums}

        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip()
        if self.scaler:
            # An overflowing fp16 gradient is routine: the scaler skips that step and lowers the scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.guard_nonfinite:
            # Under torchrun only the norm of the all-reduced gradient decides: it is the same on every rank.
            self._flag_nonfinite([grad_norm] if self.world.size > 1 else [totals["loss"], grad_norm])
            self.optimizer.found_inf = self.found_inf  # the fused optimizer skips the update on 1.0
            self.optimizer.step()
            del self.optimizer.found_inf
        else:
            self.optimizer.step()
        return {**totals, "grad_norm": grad_norm}

    def _accumulate(self, micros: list[tuple[Any, float]], hold_all: bool = False) -> tuple[dict, dict]:
        """Forward and backward of each micro-batch; the sums of the values to record and the counts of the
        (sum, count) ones. Under DDP the last micro-batch's backward all-reduces the gradients (not with
        ``hold_all``)."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        for i, (micro, share) in enumerate(micros):
            # DDP decides in the forward whether the backward all-reduces: both go inside no_sync.
            held = self.no_sync is not None and (hold_all or i < len(micros) - 1)
            with self.no_sync() if held else contextlib.nullcontext():
                parts = self._backward(micro, share)
            for name, value in parts.items():
                if _is_pair(value):
                    total, count = value[0].detach(), torch.as_tensor(value[1], device=self.device)
                    counts[name] = counts[name] + count if name in counts else count
                elif share != 1:
                    total = value.detach() * share
                else:
                    # Read at the log interval: a value without a graph may be the loss function's own state.
                    total = value.detach() if value.requires_grad and not self.own_values else value.clone()
                sums[name] = sums[name] + total if name in sums else total
        return sums, counts

    def _accumulate_agreed(self, micros: list[tuple[Any, float]]) -> tuple[dict, dict]:
        """Under torchrun with train.microbatch = "auto": every backward without DDP's all-reduce, then one
        all-reduce of one number says whether any rank ran out of memory (so that none waits in a gradient
        all-reduce for a rank that never comes), then the gradients are averaged as DDP averages them."""
        failed = False
        try:
            sums, counts = self._accumulate(micros, hold_all=True)
        except torch.OutOfMemoryError:
            failed = True
        if self.world.any(failed, self.device):
            raise torch.OutOfMemoryError(f"out of memory on {'this' if failed else 'another'} process of torchrun")
        self.world.average_gradients([p.grad for p in self.params if p.grad is not None])
        return sums, counts

    def _flag_nonfinite(self, values: list[torch.Tensor]) -> None:
        """Set ``found_inf`` to 1.0 if any value is NaN or infinite, else 0.0, on the device.

        This is the single kernel GradScaler checks gradients with; scaling by one leaves the
        values as they are. (``isfinite`` and friends would take four kernels, a measurable
        share of a small model's step.)
        """
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(values, self.found_inf, self.unit_scale)

    def _micro_batches(self, batch: Any) -> list[tuple[Any, float]]:
        """The micro-batches of one step, each with its share of the batch's examples: ``grad_accum``
        chunks, each cut into ``micro_batches`` (one split of grad_accum x micro_batches when either is 1)."""
        if self.grad_accum == 1 and self.micro_batches == 1:
            return [(batch, 1.0)]
        size = batch_size(batch)
        chunks = split(batch, min(self.grad_accum, size))
        micros = [m for chunk in chunks for m in split(chunk, min(self.micro_batches, batch_size(chunk)))]
        return [(micro, batch_size(micro) / size) for micro in micros]

    def most_micro_batches(self, batch: Any) -> int:
        """The split at which every micro-batch holds one example: splitting further changes nothing."""
        return max(batch_size(chunk) for chunk in split(batch, min(self.grad_accum, batch_size(batch))))

    def _backward(self, micro: Any, share: float) -> dict[str, Loss]:
        """Forward and backward of one micro-batch holding ``share`` of the batch's examples."""
        with autocast(self.device, self.precision):
            parts = loss_parts(self.loss_fn(self.model, micro))
        if self.oom_above is not None and batch_size(micro) > self.oom_above:
            raise torch.OutOfMemoryError(f"EPOCHAL_TEST_OOM_ABOVE: {batch_size(micro)} examples > {self.oom_above}")
        loss = parts["loss"]
        if _is_pair(loss):
            loss = loss[0]
        elif share != 1:
            # Weighting by size makes the accumulated gradient that of the whole batch's mean.
            loss = loss * share
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        return parts

    def _clip(self) -> torch.Tensor:
        """The global gradient norm (clipped to grad_clip when set). Of sharded gradients (FSDP) it is a sharded
        value: its whole, the same on every rank, is what is recorded and guarded."""
        if self.grad_clip > 0:
            return full(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True))
        grads = [p.grad for p in self.params if p.grad is not None]
        return full(torch.nn.utils.get_total_norm(grads, foreach=True))
