"""AdamW with parameter groups, and learning-rate schedules as pure functions of the step.

Schedules are plain functions ``f(step) -> multiplier`` so that the torch path
(through LambdaLR), the NumPy reference trainer and the tests all share one
definition, and the learning rate of any step is known without replay.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import nn

Schedule = Callable[[int], float]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup, then linear decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0 - (1.0 - min_lr_ratio) * progress


def warmup_constant(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup, then the peak learning rate for the rest of training."""
    if step < warmup_steps:
        return step / warmup_steps
    return 1.0


SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": warmup_cosine,
    "linear": warmup_linear,
    "constant": warmup_constant,
}


def make_schedule(kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Schedule:
    """The multiplier of the peak learning rate as a function of the optimizer step."""
    return partial(
        SCHEDULES[kind], warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )


def resolve_warmup_steps(total_steps: int, warmup_fraction: float, warmup_steps: int | None) -> int:
    """A step count wins over a fraction; a fraction is of all optimizer steps (so the schedule's shape does not depend on grad_accum)."""
    if warmup_steps is not None:
        return warmup_steps
    return int(warmup_fraction * total_steps)


_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)
if hasattr(nn, "RMSNorm"):
    _NO_DECAY_MODULES = _NO_DECAY_MODULES + (nn.RMSNorm,)


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Two groups: weights that decay, and biases / norm weights / embeddings that do not.

    Decaying a norm's gain or an embedding pulls it towards zero for no benefit,
    which is why the common recipes exclude them.
    """
    if decay_all:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    no_decay: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, _NO_DECAY_MODULES) or name.endswith("bias") or param.ndim < 2:
                no_decay.add(id(param))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in no_decay]
    keep = [p for p in model.parameters() if p.requires_grad and id(p) in no_decay]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    decay_all: bool = False,
) -> torch.optim.AdamW:
    """torch's fused AdamW on every device.

    Fused is faster than foreach on CPU too (measured: 720 vs 877 us a step on a
    small MLP) and it reads a ``found_inf`` flag on the device, which is how a
    step with a non-finite gradient is skipped without a host synchronisation.
    """
    return torch.optim.AdamW(
        param_groups(model, weight_decay, decay_all), lr=lr, betas=betas, eps=eps, fused=True
    )
