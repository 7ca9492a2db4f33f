"""train.parallel = "fsdp": the model sharded over torchrun's processes with torch's FSDP2.

``shard`` applies ``torch.distributed.fsdp.fully_shard`` to every module whose class the run names
(``train.fsdp_modules``), then to the root; each process then holds about 1/N of the parameters,
gradients and optimizer state. Parameters are gathered for a module's forward and backward and
freed after; gradients are reduce-scattered. Mixed precision follows ``train.precision``: bf16
parameters for the compute, gradients reduced in fp32.

What a sharded model changes elsewhere, each in one place:

- the state of the model and the optimizer goes through ``torch.distributed.checkpoint.state_dict``
  (``ModelState``/``OptimizerState``): each rank's shards under the model's own parameter names, which
  sharded checkpoints (sharded_checkpoint.py) write and read back rank by rank, as they do any other
  registered state holding shards (the EMA shadow);
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


def check_world(train, world_size: int, device: torch.device) -> str | None:
    """Refuse, before a run folder exists, an FSDP setting this process cannot run; a note when one process
    runs it (nothing to shard over: the model stays whole, and checkpoints are sharded folders all the same,
    so a run moves between one process and torchrun at any size)."""
    if train.parallel != "fsdp":
        return None
    if train.precision == "fp16":
        raise ConfigError("train.precision: fp16 needs a loss scaler that FSDP's sharded gradients do not take; "
                          "allowed with train.parallel = 'fsdp': bf16 (same range as fp32) or fp32")
    if train.fsdp_cpu_offload and device.type != "cuda":
        raise ConfigError("train.fsdp_cpu_offload: moves a GPU's shards to host memory, and this run is on "
                          f"{device.type}; allowed here: false")
    if world_size == 1:
        return ("train.parallel = 'fsdp' in one process: the model stays whole (nothing to shard it over); "
                "its checkpoints are sharded folders, which torchrun resumes at any size")
    return None


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


def whole_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The sharded model's state as whole tensors under its own names, in host memory, on rank 0 (empty
    elsewhere; a collective every rank makes): what an export writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class ModelState:
    """The model's state under its own parameter names: each rank's shards (whole tensors in one process)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state)


class OptimizerState:
    """The optimizer's state keyed by parameter name, so that it fits any world size: each rank's shards."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state)


def local_parameter_count(model: nn.Module) -> int:
    """The parameters this process holds (its shards'), for checking that each holds about 1/N."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
