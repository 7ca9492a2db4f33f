"""Training data as batches whose order is a pure function of (seed, epoch).

Position k of epoch e is known without replaying anything, so a resume jumps
straight to it. What a run can be given (``make_batches``):

- tensors (a tensor, or a tuple/list/dict of them, nested) or a ``TensorDataset``:
  moved to the device once and batched by indexing with the epoch's permutation;
- a map-style ``Dataset``: read through a DataLoader in that same order, with
  ``train.num_workers`` workers; a worker seeds python, numpy and torch from
  (seed, epoch, batch) before each batch, so random transforms give the same
  batch whichever worker makes it (and again after a resume);
- the user's ``DataLoader``: its batch size, sampler, collate function and workers
  are used as they are; a shuffling sampler without a generator of its own is
  seeded from (seed, epoch), one with a generator has the generator's state kept
  in checkpoints, a ``set_epoch`` sampler gets the epoch: a resumed epoch is the same;
- an ``IterableDataset`` (or a DataLoader over one): one pass is an epoch, the
  length is unknown, so a step budget (``train.max_steps``) is required. One with
  state (``state_dict``/``load_state_dict``) or a torchdata ``StatefulDataLoader``
  resumes by loading its state (streams.py); one without skips the batches already
  trained on (exact when the data yields the same batches on every pass).

Under torchrun every batch above is a global batch: rank r of R trains on its r-th
R-th of each one, so the global batches and their order are the same at any world
size. Each batch must split evenly over the ranks; iterable data cannot be sharded
here and is refused.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, TensorDataset

from epochal.checkpoint import tensors_sha256
from epochal.distributed import ALONE, World, check_global_batch
from epochal.errors import CheckpointError, ConfigError
from epochal.tree import leaves, to_device, tree_map

ACCEPTED = "a tensor, a tuple/list/dict of tensors, a Dataset, an IterableDataset or a DataLoader"


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` examples for ``epoch``: a generator seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def _epoch_generator(seed: int, epoch: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + purpose * 7_919)


class Batches:
    """The protocol: ``len`` (optimizer steps per epoch, None if unknown), ``epoch(e, start)``,
    ``describe()`` for provenance, and ``state_dict``/``load_state_dict`` (registered as "data")."""

    exact_resume = True  # False: a resume inside an epoch skips batches instead of jumping to them
    skip_reason = ""  # where it skips: why, and how to avoid it (the resume says so)
    wait_seconds = 0.0  # host time spent waiting for the next batch, summed (the throughput meter reads it)

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int | None:
        return len(self)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` from position ``start`` on, timed: two clock reads a step."""
        batches = self._epoch(epoch, start)
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.wait_seconds += time.perf_counter() - started
            yield batch

    def _epoch(self, epoch: int, start: int) -> Iterator[Any]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": type(self).__name__}

    def order_sha256(self, epoch: int) -> str | None:
        """A hash of the epoch's batch order (which examples, in which batches); None where unknown."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def follow(self, position: Callable[[], tuple[int, int]]) -> None:
        """Told where the loop has trained to, (epoch, batches into it), for data that keeps state per batch."""


class _Ordered(Batches):
    """n examples in (seed, epoch) order, cut into batches."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, world: World = ALONE):
        if n == 0:
            raise ConfigError("train_data: the training data holds no examples; allowed: at least one batch")
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.rank, self.ranks = world.rank, world.size
        if len(self) == 0:
            raise ConfigError(f"train.drop_last: {n} training examples are fewer than one batch of {batch_size}; "
                              "allowed: a smaller train.batch_size or drop_last = false")
        last = n - (len(self) - 1) * batch_size
        if last % self.ranks:
            raise ConfigError(f"train.drop_last: the last batch of {last} examples does not split evenly over "
                              f"{self.ranks} processes; allowed: drop_last = true, or a dataset size whose last "
                              f"batch is a multiple of {self.ranks}")

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def order_sha256(self, epoch: int) -> str:
        order = epoch_order(self.n, self.seed, epoch)
        return hashlib.sha256(f"{self.batch_size}:{self.drop_last}:".encode() + order.numpy().tobytes()).hexdigest()

    def _index_batches(self, epoch: int, start: int, device: torch.device | None = None) -> Iterator[torch.Tensor]:
        order = epoch_order(self.n, self.seed, epoch)
        if device is not None:
            order = order.to(device)  # one transfer an epoch, then slices of it
        for k in range(start, len(self)):
            batch = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield batch if self.ranks == 1 else shard(batch, self.rank, self.ranks)


class DeviceBatches(_Ordered):
    """Equal-length tensors on the device, batched by indexing with the epoch's permutation."""

    def __init__(self, tensors: Any, device: torch.device, batch_size: int, seed: int, drop_last: bool,
                 world: World = ALONE):
        lengths = [len(t) if t.ndim else None for t in leaves(tensors)]
        if not lengths or None in lengths or len(set(lengths)) != 1:
            raise ConfigError(f"train_data: tensors must share their first (example) dimension, got lengths {lengths}")
        self.tensors = to_device(tensors, device)
        self.device = device
        super().__init__(lengths[0], batch_size, seed, drop_last, world)

    def _epoch(self, epoch: int, start: int) -> Iterator[Any]:
        for index in self._index_batches(epoch, start, self.device):
            yield tree_map(lambda t, index=index: t[index], self.tensors)

    def describe(self) -> dict:
        """The data's own hash too (inputs, targets, masks): an audit compares it between runs."""
        tensors = {str(i): t for i, t in enumerate(leaves(self.tensors))}
        return {"kind": "tensors", "examples": self.n, "tensors_sha256": tensors_sha256(tensors)}


class DeviceCopy:
    """Host batches to the device. On a GPU the copy runs on a side stream, from pinned memory (the loaders
    here pin on CUDA), so it overlaps the step the GPU is still running; the next step's stream waits for
    the copy alone. Tensors already on the device are left where they are. Only the copy moves: batches are
    read in the same order and at the same moments as without it, so what a checkpoint records is the
    position of the last batch trained on."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, batch: Any) -> Any:
        if self.stream is None:
            return to_device(batch, self.device, non_blocking=True)
        step_stream = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            moved = to_device(batch, self.device, non_blocking=True)
        step_stream.wait_stream(self.stream)
        for tensor in leaves(moved):
            tensor.record_stream(step_stream)  # its memory is not reused while the step still reads it
        return moved


class _SeededFetch(Dataset):
    """Fetches a batch's items after seeding every generator from (seed, epoch, batch) when in a worker."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keyed: list[tuple[int, int]]) -> list:
        batch_number, indices = keyed[0][0], [index for _, index in keyed]
        if torch.utils.data.get_worker_info() is not None:  # the main process keeps its (checkpointed) stream
            seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + batch_number
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(indices) if getitems else [self.dataset[i] for i in indices]


def _keyed(batches: list[list[int]], start: int) -> list[list[tuple[int, int]]]:
    return [[(start + k, index) for index in batch] for k, batch in enumerate(batches)]


class LoaderBatches(_Ordered):
    """A map-style Dataset read through a DataLoader, in the same (seed, epoch) order."""

    def __init__(self, dataset: Dataset, device: torch.device, batch_size: int, seed: int, drop_last: bool,
                 workers: int = 0, world: World = ALONE):
        self.dataset, self.device, self.workers = dataset, device, workers
        self.copy = DeviceCopy(device)
        super().__init__(len(dataset), batch_size, seed, drop_last, world)

    def _epoch(self, epoch: int, start: int) -> Iterator[Any]:
        batches = [index.tolist() for index in self._index_batches(epoch, start)]
        loader = DataLoader(_SeededFetch(self.dataset, self.seed, epoch), batch_sampler=_keyed(batches, start),
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            generator=_epoch_generator(self.seed, epoch, 1))
        for batch in loader:
            yield self.copy(batch)

    def describe(self) -> dict:
        return {"kind": "Dataset", "dataset": type(self.dataset).__name__, "num_workers": self.workers}


class UserLoaderBatches(Batches):
    """The user's map-style DataLoader: its sampler, batch size, collate and workers, in a resumable order."""

    def __init__(self, loader: DataLoader, device: torch.device, seed: int, world: World = ALONE):
        if loader.batch_sampler is None:
            raise ConfigError("train_data: a DataLoader with batch_size=None yields single examples; allowed: a "
                              "DataLoader with a batch_size or a batch_sampler")
        self.loader, self.device, self.seed = loader, device, seed
        self.copy = DeviceCopy(device)
        self.sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)
        self.rank, self.ranks = world.rank, world.size
        if self.ranks > 1 and isinstance(self.sampler, DistributedSampler):
            raise ConfigError("train_data: a DataLoader with a DistributedSampler; allowed under torchrun: the "
                              "DataLoader you would use on one process (epochal gives each rank its part of each batch)")
        self.epoch_start: tuple[int, torch.Tensor] | None = None  # (epoch, sampler generator state as it began)
        self._listed: tuple[int, list[list[int]]] | None = None  # the latest epoch's batches, for its order hash
        if len(loader.batch_sampler) == 0:
            raise ConfigError("train_data: the DataLoader yields no batches; allowed: at least one batch")

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)

    def order_sha256(self, epoch: int) -> str | None:
        listed = self._listed
        if listed is None or listed[0] != epoch:
            return None
        return hashlib.sha256(repr(listed[1]).encode()).hexdigest()

    def _batches_of(self, epoch: int) -> list[list[int]]:
        batches = self._draw_batches(epoch)
        self._listed = (epoch, batches)
        return batches

    def _draw_batches(self, epoch: int) -> list[list[int]]:
        sampler = self.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(sampler, "generator", None)
        if isinstance(sampler, RandomSampler) and generator is None:
            sampler.generator = _epoch_generator(self.seed, epoch, 2)
            try:
                return [list(batch) for batch in self.loader.batch_sampler]
            finally:
                sampler.generator = None
        if isinstance(generator, torch.Generator):
            if self.epoch_start is not None and self.epoch_start[0] == epoch:
                generator.set_state(self.epoch_start[1])  # a resumed epoch draws the order it drew before
            self.epoch_start = (epoch, generator.get_state())
        return [list(batch) for batch in self.loader.batch_sampler]

    def _epoch(self, epoch: int, start: int) -> Iterator[Any]:
        batches = self._batches_of(epoch)[start:]
        if self.ranks > 1:
            for batch in batches:
                check_global_batch(len(batch), self.ranks, "train_data: a batch of the DataLoader")
            batches = [shard(batch, self.rank, self.ranks) for batch in batches]
        loader = self.loader
        rebuilt = DataLoader(_SeededFetch(loader.dataset, self.seed, epoch), batch_sampler=_keyed(batches, start),
                             num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                             pin_memory=loader.pin_memory, timeout=loader.timeout,
                             worker_init_fn=loader.worker_init_fn,
                             multiprocessing_context=loader.multiprocessing_context,
                             generator=_epoch_generator(self.seed, epoch, 1),
                             prefetch_factor=loader.prefetch_factor if loader.num_workers else None)
        for batch in rebuilt:
            yield self.copy(batch)

    def describe(self) -> dict:
        loader = self.loader
        return {"kind": "DataLoader", "batch_size": loader.batch_size, "num_workers": loader.num_workers,
                "sampler": type(self.sampler).__name__, "drop_last": loader.drop_last,
                "collate_fn": getattr(loader.collate_fn, "__name__", type(loader.collate_fn).__name__)}

    def state_dict(self) -> dict:
        if self.epoch_start is None:
            return {}
        return {"epoch": self.epoch_start[0], "generator_state": self.epoch_start[1]}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_start = (state["epoch"], state["generator_state"]) if state else None


def seeded_pass(loader: DataLoader, seed: int, epoch: int) -> Iterator[Any]:
    """A pass over ``loader`` whose workers are seeded from (seed, epoch) unless it has a generator of its own:
    a DataLoader seeds them from the global stream otherwise, which a resume would shift."""
    own_seed = loader.generator is None
    if own_seed:
        loader.generator = _epoch_generator(seed, epoch, 3)
    try:
        return iter(loader)
    finally:
        if own_seed:
            loader.generator = None


class IterableBatches(Batches):
    """An IterableDataset or a DataLoader over one: each pass is an epoch of unknown length."""

    exact_resume = False

    def __init__(self, loader: DataLoader, device: torch.device, seed: int):
        self.loader, self.device, self.seed = loader, device, seed
        self.copy = DeviceCopy(device)

    def __len__(self) -> int:
        raise TypeError("an iterable dataset has no known number of batches")

    @property
    def steps_per_epoch(self) -> int | None:
        return None

    def _epoch(self, epoch: int, start: int) -> Iterator[Any]:
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(epoch)
        batches = seeded_pass(self.loader, self.seed, epoch)
        # A resume skips what it already trained on, reading it again: on a terminal a bar shows how far.
        skipping = tqdm(total=start, desc="resume: skipping batches already trained on", unit="batch",
                        disable=None if start else True, leave=False, mininterval=0.5)
        for position, batch in enumerate(batches):
            if position < start:
                skipping.update()
                continue
            skipping.close()
            yield self.copy(batch)
        skipping.close()

    @property
    def skip_reason(self) -> str:
        return (f"the dataset {type(self.loader.dataset).__name__} has no state_dict; give it state_dict/"
                "load_state_dict (or pass torchdata's StatefulDataLoader) and a resume loads its position instead")

    def describe(self) -> dict:
        return {"kind": "IterableDataset", "dataset": type(self.loader.dataset).__name__,
                "batch_size": self.loader.batch_size, "num_workers": self.loader.num_workers}

    def load_state_dict(self, state: dict) -> None:
        if state:  # written by a stateful stream: this data could not continue where that one stood
            raise CheckpointError(f"the checkpoint holds the state of dataset {state.get('dataset')}, this run's "
                                  f"data {type(self.loader.dataset).__name__} has no state_dict; allowed: the "
                                  "dataset the run started with")


def shard(batch, rank: int, ranks: int):
    """Rank ``rank``'s part of a global batch (of indices) that splits evenly over ``ranks``."""
    size = len(batch) // ranks
    return batch[rank * size : (rank + 1) * size]


def make_batches(train_data: Any, device: torch.device, batch_size: int, seed: int, drop_last: bool,
                 workers: int = 0, world: World = ALONE) -> Batches:
    iterable = isinstance(train_data, IterableDataset) or (
        isinstance(train_data, DataLoader) and isinstance(train_data.dataset, IterableDataset))
    if iterable and world.size > 1:
        raise ConfigError("train_data: an iterable dataset cannot be split among torchrun's processes; allowed "
                          "with more than one: tensors, a map-style Dataset or a DataLoader over one")
    if not isinstance(train_data, DataLoader):
        check_global_batch(batch_size, world.size)
    if iterable:
        from epochal import streams  # here, not at the top: streams.py builds on this module

        if streams.is_stateful(train_data):
            return streams.StreamBatches(train_data, device, batch_size, seed, workers)
    if isinstance(train_data, DataLoader):
        if isinstance(train_data.dataset, IterableDataset):
            return IterableBatches(train_data, device, seed)
        return UserLoaderBatches(train_data, device, seed, world)
    if isinstance(train_data, IterableDataset):
        return IterableBatches(DataLoader(train_data, batch_size=batch_size, num_workers=workers), device, seed)
    if isinstance(train_data, TensorDataset):
        return DeviceBatches(tuple(train_data.tensors), device, batch_size, seed, drop_last, world)
    duck_typed = hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__") and not isinstance(
        train_data, (torch.Tensor, tuple, list, dict, str, bytes))
    if isinstance(train_data, Dataset) or duck_typed:  # e.g. a Hugging Face dataset
        return LoaderBatches(train_data, device, batch_size, seed, drop_last, workers, world)
    if leaves(train_data):
        return DeviceBatches(train_data, device, batch_size, seed, drop_last, world)
    raise ConfigError(f"train_data: got {type(train_data).__name__}; allowed: {ACCEPTED}")
