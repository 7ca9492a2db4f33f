"""train.parallel = "fsdp": the model sharded over torchrun's processes with torch's FSDP2.

``shard`` applies ``torch.distributed.fsdp.fully_shard`` to every module whose class the run names
(``train.fsdp_modules``), then to the root; each process then holds about 1/N of the parameters,
gradients and optimizer state. Parameters are gathered for a module's forward and backward and
freed after; gradients are reduce-scattered. Mixed precision follows ``train.precision``: bf16
parameters for the compute, gradients reduced in fp32.

What a sharded model changes elsewhere, each in one place:

- the state of the model and the optimizer goes through ``torch.distributed.checkpoint.state_dict``
  (``ModelState``/``OptimizerState``); any other registered state holding sharded tensors (the EMA
  shadow) is gathered and re-sharded by ``GatheredState``;
- gradient accumulation holds the reduce-scatter with ``set_requires_gradient_sync`` (``no_sync``);
- evaluation and test run on every rank with the whole parameters gathered (``gathered``): a forward pass needs
  every rank's shards, and a task's evaluation may call the model's other methods.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from epochal.errors import ConfigError


def check_world(train, world_size: int, device: torch.device) -> None:
    """Refuse, before a run folder exists, an FSDP setting this process cannot run."""
    if train.parallel != "fsdp":
        return
    if world_size == 1:
        raise ConfigError("train.parallel: 'fsdp' shards the model over torchrun's processes, and this is one "
                          "process; allowed: start it with torchrun --nproc-per-node N (N >= 2), or "
                          "train.parallel = 'ddp'")
    if train.precision == "fp16":
        raise ConfigError("train.precision: fp16 needs a loss scaler that FSDP's sharded gradients do not take; "
                          "allowed with train.parallel = 'fsdp': bf16 (same range as fp32) or fp32")
    if train.fsdp_cpu_offload and device.type != "cuda":
        raise ConfigError("train.fsdp_cpu_offload: moves a GPU's shards to host memory, and this run is on "
                          f"{device.type}; allowed here: false")


def shard(model: nn.Module, train) -> nn.Module:
    """``model`` sharded in place: each named module class, then the root (which gathers what is left)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    named = set(train.fsdp_modules)
    present = {type(module).__name__ for module in model.modules()}
    unknown = sorted(named - present)
    if unknown:
        raise ConfigError(f"train.fsdp_modules: {', '.join(unknown)} names no module class of this model; "
                          f"allowed: {', '.join(sorted(present))}")
    options: dict[str, Any] = {}
    if train.precision == "bf16":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if train.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    blocks = [module for module in model.modules() if type(module).__name__ in named and module is not model]
    if train.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)  # recomputes the block's activations in its backward; keeps parameter names
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def no_sync(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """A context in which backward passes keep their gradients unreduced (all but an accumulation's last)."""

    @contextlib.contextmanager
    def held():
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    return held


@contextlib.contextmanager
def gathered(model: nn.Module):
    """Inside the block every sharded module holds its whole parameters and keeps them across forward passes:
    evaluation may call the model's other methods (a task's generation calls its blocks one by one)."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in sharded:
            module.reshard()
            module.set_reshard_after_forward(True, recurse=False)


def full(value: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's whole value (a collective every rank makes); any other tensor as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _options(saving: bool):
    """Whole tensors held by rank 0 alone, in host memory, when saving (as a DDP run's rank 0 holds them); when
    loading, rank 0's sent to every rank (each rank cuts its shard), so the others' copies are never read."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if saving:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


class ModelState:
    """The sharded model's state as whole tensors under the model's own names (what a DDP run saves), on rank 0
    (empty elsewhere), and back from rank 0's."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_options(saving=True))

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state, options=_options(saving=False))


class OptimizerState:
    """The optimizer's state of a sharded model as whole tensors keyed by parameter name, on rank 0 (empty
    elsewhere), and back from rank 0's."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_options(saving=True))

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=_options(saving=False))


class GatheredState:
    """Any other state that holds sharded tensors (the EMA shadow): saved whole, loaded back into the
    layout the entry's own tensors have."""

    def __init__(self, entry):
        self.entry = entry

    def state_dict(self) -> dict:
        return _map(self.entry.state_dict(), lambda value, _: full(value))

    def load_state_dict(self, state: dict) -> None:
        self.entry.load_state_dict(_map(state, _like, self.entry.state_dict()))


def _like(value: Any, current: Any) -> Any:
    """``value`` (a whole tensor) cut to this rank's shard when ``current`` is sharded."""
    if isinstance(value, torch.Tensor) and hasattr(current, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(current.device, current.dtype), current.device_mesh, current.placements,
                                 src_data_rank=None)
    return value


def _map(value: Any, convert: Callable[[Any, Any], Any], current: Any = None) -> Any:
    """``convert(leaf, current leaf)`` over nested dicts and lists, paired with ``current`` where it has them."""
    if isinstance(value, dict):
        return {k: _map(v, convert, current.get(k) if isinstance(current, dict) else None) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        paired = current if isinstance(current, (list, tuple)) and len(current) == len(value) else [None] * len(value)
        return type(value)(_map(v, convert, c) for v, c in zip(value, paired))
    return convert(value, current)


def local_parameter_count(model: nn.Module) -> int:
    """The parameters this process holds (its shards'), for checking that each holds about 1/N."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
