"""More than one process (torchrun): where this process stands, and every collective a run makes.

A process started by torchrun finds RANK, WORLD_SIZE and LOCAL_RANK in its environment.
``World.from_env`` reads them; a plain process is a world of one whose collectives are
identities, so the loop has one path. What crosses between processes, and when:

- each step: DistributedDataParallel's gradient all-reduce (and, for a (sum, count) loss,
  one all-reduce of the counts, so the gradient is divided by the global count);
- each log interval: one all-reduce of the interval's per-step values and a flag per
  preemption signal, so every rank records the global batch's loss and stops at the same step;
- each evaluation: rank 0 evaluates, the metrics are broadcast (every policy decides alike);
- each checkpoint: every rank's random generators are gathered to rank 0, which writes.

Only rank 0 writes the run folder; a failure while starting is gathered, so rank 0 reports
"rank K failed: ..." and every rank stops with the same error.
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from epochal.errors import ConfigError, EpochalError
from epochal.state import capture_rng, restore_rng

T = TypeVar("T")
# A marker rank 0 writes into the run folder for the other ranks to find: proof they see the same folder.
SHARED_MARKER = ".epochal-shared-check"


class RankFailed(EpochalError):
    """Another rank failed; ``quiet`` when rank 0 already reports the same line."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


class World:
    """This process's rank among ``size`` training processes (a size of 1: no torchrun)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, restarts: int = 0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.restarts = restarts  # torchrun --max-restarts: how often the group was restarted
        self.backend = ""  # nccl or gloo once joined

    @classmethod
    def from_env(cls) -> "World":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and evaluates."""
        return self.rank == 0

    # ------------------------------------------------------------- lifetime
    def join(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on the CPU) and return this rank's device. The group
        lives as long as the process: a script's later runs reuse it (set up again, gloo may not reconnect),
        and so does a group the script started itself."""
        if self.size == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # torchrun's store outlives a restart of the group: keys of the attempt before would mislead this one.
            store, _, _ = next(dist.rendezvous("env://", self.rank, self.size))
            store = dist.PrefixStore(f"epochal/attempt-{self.restarts}", store)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=self.rank,
                                    world_size=self.size)
            atexit.register(dist.destroy_process_group)
        self.backend = dist.get_backend()
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device, train) -> torch.nn.Module:
        """The module the step trains through: DistributedDataParallel, the model sharded in place
        (train.parallel = "fsdp", sharding.py), or the model itself alone."""
        if self.size == 1:
            return model
        if train.parallel == "fsdp":
            from epochal.sharding import shard

            return shard(model, train)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0 only; its result on every rank."""
        return self.broadcast(compute() if self.main else None)

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value``, in rank order, on rank 0; None elsewhere."""
        if self.size == 1:
            return [value]
        out = [None] * self.size if self.main else None
        dist.gather_object(value, out, dst=0)
        return out

    def all_gather(self, value: T) -> list[T]:
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def together(self, work: Callable[[], T]) -> T:
        """Run ``work`` on every rank; if it fails on any, it fails on all, and rank 0 says which rank and why."""
        if self.size == 1:
            return work()
        error: Exception | None = None
        try:
            result = work()
        except Exception as err:  # reported on every rank below, then raised where it happened
            error = err
        failures = self.all_gather(None if error is None else str(error))
        if error is not None:
            if not self.main and failures[0] == failures[self.rank]:
                raise RankFailed(str(error), quiet=True) from error  # rank 0 prints this very line
            raise error
        rank, message = next(((r, m) for r, m in enumerate(failures) if m is not None), (None, None))
        if rank is not None:
            raise RankFailed(f"rank {rank} failed: {message}", quiet=not self.main)
        return result

    def agree(self, rows: torch.Tensor, flags: list[float], exact: list[int]) -> tuple[torch.Tensor, list[float]]:
        """One all-reduce for a log interval: the ranks' per-step values averaged (columns in ``exact``,
        equal on every rank already, are kept as they are) and ``flags`` summed over the ranks."""
        packed = torch.cat([rows.flatten(), torch.tensor(flags, device=rows.device, dtype=rows.dtype)])
        dist.all_reduce(packed)
        mean = packed[: rows.numel()].view_as(rows) / self.size
        mean[:, exact] = rows[:, exact]
        return mean, packed[rows.numel():].tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether any rank's ``flag`` is set: one all-reduce of one number (and a host read)."""
        if self.size == 1:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def average_gradients(self, grads: list[torch.Tensor]) -> None:
        """What DDP does to gradients, written out for a step whose backward held its all-reduce: each rank's
        divided by the rank count, then summed over the ranks (in one flat buffer)."""
        if self.size == 1 or not grads:
            return
        torch._foreach_div_(grads, self.size)
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)

    def global_counts(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The (sum, count) losses' counts over all ranks, divided by the rank count: dividing a rank's sum
        by it and averaging over ranks (as DDP does with gradients) gives the global sum over the global count."""
        names = list(counts)
        total = torch.stack([counts[name].float() for name in names])
        dist.all_reduce(total)
        return {name: total[i] / self.size for i, name in enumerate(names)}

    # ------------------------------------------------------------ checking
    def check_shared(self, folder) -> None:
        """Refuse, on every rank, when a rank cannot see the run folder rank 0 made (not a shared filesystem)."""
        if self.size == 1:
            return
        marker = folder / SHARED_MARKER
        token = secrets.token_hex(8) if self.main else None
        if self.main:
            marker.write_text(token)
        token = self.broadcast(token)
        try:
            seen = marker.read_text() == token
        except OSError:
            seen = False
        views = self.all_gather((seen, socket.gethostname()))
        if self.main:
            marker.unlink(missing_ok=True)
        blind = [f"rank {rank} on {host}" for rank, (ok, host) in enumerate(views) if not ok]
        if blind:
            message = (f"out_dir: {folder} made by rank 0 on {views[0][1]} is not visible to {', '.join(blind)}; "
                       "allowed: a folder on a filesystem every node shares")
            raise ConfigError(message) if self.main else RankFailed(message, quiet=True)

    def describe(self, device: torch.device) -> dict:
        """For env.json: the world size, backend and every rank's host and device (a collective)."""
        ranks = self.all_gather({"rank": self.rank, "local_rank": self.local_rank, "host": socket.gethostname(),
                                 "device": str(device)})
        return {"world_size": self.size, "backend": self.backend, "ranks": ranks}


ALONE = World()  # a process on its own: what everything assumes unless torchrun started it


class RanksRNG:
    """Every global generator a step may draw from, for every rank, as one registry entry (a single
    process is a world of one): gathered to rank 0 when saving, and each rank takes back its own on
    resume. A checkpoint of another world size gives rank k the states of rank k modulo that size
    (the data continues exactly; random draws differ, and the resume says so)."""

    def __init__(self, world: World):
        self.world = world

    def state_dict(self) -> dict:
        return {"ranks": self.world.gather(capture_rng()) or []}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks") or [state]  # checkpoints before torchrun support held one bare state
        restore_rng(ranks[self.world.rank % len(ranks)])


def check_global_batch(batch_size: int, ranks: int, what: str = "train.batch_size") -> None:
    if batch_size % ranks:
        raise ConfigError(f"{what}: {batch_size} is the global batch and must split evenly over {ranks} processes; "
                          f"allowed: a multiple of {ranks}")
