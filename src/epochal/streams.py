"""Streams that resume in constant time: iterable data whose position is a ``state_dict``.

A stream is stateful when its dataset has ``state_dict``/``load_state_dict`` (torchdata's
``Stateful``, a Hugging Face ``datasets.IterableDataset``) or when it comes as torchdata's
``StatefulDataLoader``. Either way it is read through a ``StatefulDataLoader``, which also
keeps each worker's state, and its state goes into every checkpoint under "data": a resume
loads it and continues at the next batch, without reading the ones already trained on.

The state saved is the one that goes with the last batch trained on: the loader's state is
copied right after each batch arrives, keyed to (epoch, batches into the epoch), and a
checkpoint takes the copy of the position the loop has trained to, not the latest fetched
(the loop fetches one batch it does not train when the step budget runs out).

torchdata is imported here only, and only for a stateful stream: importing it brings its own
samplers, and nothing else should change because it is installed.
"""

from __future__ import annotations

import collections
import copy
import sys
import warnings
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from epochal.data import Batches, DeviceCopy, seeded_pass
from epochal.errors import CheckpointError, ConfigError

KEPT_SNAPSHOTS = 4  # the trained position is at most one batch behind the fetched one; a few spare
SAVEABLE = (bool, int, float, str, type(None), torch.Tensor)  # what torch.load(weights_only=True) reads back
ALLOWED = "tensors, numbers, strings, lists or dicts"


def dataset_of(data: Any) -> Any:
    return data.dataset if isinstance(data, DataLoader) else data


def is_stateful_loader(data: Any) -> bool:
    """A torchdata StatefulDataLoader; torchdata is loaded already if the user made one."""
    module = sys.modules.get("torchdata.stateful_dataloader")
    return module is not None and isinstance(data, module.StatefulDataLoader)


def has_state(dataset: Any) -> bool:
    return callable(getattr(dataset, "state_dict", None)) and callable(getattr(dataset, "load_state_dict", None))


def is_stateful(data: Any) -> bool:
    return is_stateful_loader(data) or has_state(dataset_of(data))


def check_saveable(value: Any, where: str) -> None:
    """Refuse, naming the entry, a state a checkpoint could not hold or a weights-only load could not read."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ConfigError(f"{where}: key {key!r} is a {type(key).__name__}; a checkpoint holds "
                                  f"{ALLOWED}, keyed by strings or integers")
            check_saveable(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_saveable(item, f"{where}[{index}]")
    elif not isinstance(value, SAVEABLE):
        kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        raise ConfigError(f"{where} is a {kind}, which a checkpoint cannot hold; allowed: {ALLOWED} "
                          "(convert it in state_dict and back in load_state_dict)")


def stateful_loader(data: Any, batch_size: int, workers: int):
    """The data as a StatefulDataLoader: the user's own, or one with the settings of their DataLoader."""
    from torchdata.stateful_dataloader import StatefulDataLoader  # here only: see the module's docstring

    if isinstance(data, StatefulDataLoader):
        return data
    with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in torch: not the user's to fix
        warnings.filterwarnings("ignore", message=".*set_vital")
        if not isinstance(data, DataLoader):
            return StatefulDataLoader(data, batch_size=batch_size, num_workers=workers)
        return StatefulDataLoader(data.dataset, batch_size=data.batch_size, drop_last=data.drop_last,
                                  collate_fn=data.collate_fn, num_workers=data.num_workers,
                                  pin_memory=data.pin_memory,
                                  timeout=data.timeout, worker_init_fn=data.worker_init_fn,
                                  multiprocessing_context=data.multiprocessing_context, generator=data.generator,
                                  prefetch_factor=data.prefetch_factor if data.num_workers else None,
                                  persistent_workers=data.persistent_workers)


class StreamBatches(Batches):
    """An iterable dataset with state, read through a StatefulDataLoader: each pass is an epoch of unknown
    length, and a resume inside one loads the saved state instead of skipping batches."""

    def __init__(self, data: Any, device: torch.device, batch_size: int, seed: int, workers: int = 0):
        self.loader = stateful_loader(data, batch_size, workers)
        self.device, self.seed = device, seed
        self.copy = DeviceCopy(device)
        dataset = self.loader.dataset
        self.name = type(dataset).__qualname__
        self.keeps_state = has_state(dataset)  # False only for a user's StatefulDataLoader over a stateless one
        initial = dataset.state_dict() if self.keeps_state else {}
        check_saveable(initial, f"train_data: {self.name}.state_dict()")  # before training, not at a checkpoint
        self.keys = sorted(map(str, initial)) if isinstance(initial, dict) else []
        self.snapshots: collections.deque = collections.deque(maxlen=KEPT_SNAPSHOTS)  # ((epoch, position), state)
        self.loaded: dict | None = None  # a checkpoint's state, until the epoch it belongs to starts
        self.trained: Callable[[], tuple[int, int]] = self._fetched  # Batches.follow: the loop's position

    def __len__(self) -> int:
        raise TypeError("an iterable dataset has no known number of batches")

    @property
    def steps_per_epoch(self) -> int | None:
        return None

    @property
    def exact_resume(self) -> bool:
        """False where the resume reads its way to the position: a checkpoint without stream state (written
        before the data had one), or a dataset without state, which torchdata's loader fast-forwards."""
        return self.keeps_state and (self.loaded is None or self.loaded.get("stream") is not None)

    @property
    def skip_reason(self) -> str:
        if not self.keeps_state:
            return (f"the dataset {self.name} has no state_dict, so the StatefulDataLoader reads its way to the "
                    "position; give it state_dict/load_state_dict and a resume loads its position instead")
        return (f"the checkpoint holds no state of {self.name} (it was written before the dataset had one); "
                "the next checkpoint will, and a resume from it skips nothing")

    def follow(self, position: Callable[[], tuple[int, int]]) -> None:
        self.trained = position

    def _fetched(self) -> tuple[int, int]:
        return self.snapshots[-1][0] if self.snapshots else (0, 0)

    def _epoch(self, epoch: int, start: int) -> Iterator[Any]:
        dataset, loader = self.loader.dataset, self.loader
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        skip = start
        loaded, self.loaded = self.loaded, None
        if start and loaded is not None and loaded.get("stream") is not None:
            if (loaded["epoch"], loaded["position"]) != (epoch, start):
                raise CheckpointError(f"the data's saved state is at batch {loaded['position']} of epoch "
                                      f"{loaded['epoch'] + 1}, the run at batch {start} of epoch {epoch + 1}")
            loader.load_state_dict(loaded["stream"])
            skip = 0
        else:
            loader.load_state_dict({})  # a fresh pass, whatever an earlier one left behind
        batches = seeded_pass(loader, self.seed, epoch)
        # The position the pass starts at: the loaded state, or nothing (a fresh pass, or one that skips).
        self.snapshots.append(((epoch, start), loaded["stream"] if start and not skip else None))
        offset = start - skip  # batches of the epoch before this pass's first: the loaded position
        try:
            for position, batch in enumerate(batches, start=1):
                if position <= skip:
                    continue  # a checkpoint without stream state: skipped, as for a stateless stream
                # The pass's own iterator's state (what loader.state_dict() returns while this pass is its
                # iterator): a pass closed late cannot make a later pass's snapshots another iterator's.
                self.snapshots.append(((epoch, offset + position), copy.deepcopy(batches.state_dict())))
                yield self.copy(batch)
        finally:
            # The loader keeps its iterator: let go of it now, ended or left (the step budget, a stop), so
            # its workers shut down here, not in a garbage collection that finds their queues closed first
            # and waits 5 s for each worker.
            loader.load_state_dict({})
            del batches

    def describe(self) -> dict:
        return {"kind": "IterableDataset", "dataset": self.name, "state": "StatefulDataLoader",
                "batch_size": self.loader.batch_size, "num_workers": self.loader.num_workers}

    def state_dict(self) -> dict:
        epoch, position = self.trained()
        stream = None
        if position:  # at an epoch's start the next pass starts afresh: nothing to keep
            found = [state for key, state in self.snapshots if key == (epoch, position)]
            if not found:
                raise CheckpointError(f"train_data: no saved state of {self.name} at batch {position} of epoch "
                                      f"{epoch + 1}; the loop is more than {KEPT_SNAPSHOTS} batches behind the data")
            stream = found[-1]
        state = {"dataset": self.name, "keys": self.keys, "workers": self.loader.num_workers, "epoch": epoch,
                 "position": position, "stream": stream}
        check_saveable(state, f"train_data: {self.name}'s state")
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:  # a checkpoint from before the data had state: the resume skips, and says so
            self.loaded = {}
            return
        check_same_stream(state, self.name, self.keys, self.loader.num_workers)
        self.loaded = state
        # A checkpoint before the first batch after this (a preemption at once) saves the same position again.
        self.snapshots.append(((state["epoch"], state["position"]), state["stream"]))


def check_same_stream(state: dict, name: str, keys: list[str], workers: int) -> None:
    """Refuse the state of another dataset (another class or other state keys) or of another worker count."""
    saved = state.get("dataset")
    if saved != name or state.get("keys") != keys:
        raise CheckpointError(f"the checkpoint holds the state of dataset {saved} with keys {state.get('keys')}, "
                              f"this run's data is {name} with keys {keys}; allowed: the dataset the run started with")
    if state.get("workers") != workers:
        raise CheckpointError(f"the checkpoint's stream was read by {state.get('workers')} workers, this run's by "
                              f"{workers}; allowed: the same num_workers (each worker keeps its own state)")
