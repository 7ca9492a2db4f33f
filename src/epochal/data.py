"""Batches whose order is a pure function of (seed, epoch).

Position k of epoch e is known without replaying anything: resume jumps straight
to it. Data that fits lives on the device and is indexed there; a map-style
Dataset that does not fit is read through a DataLoader in the same order.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` examples for ``epoch``: a generator seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class _Batches:
    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool):
        if n == 0:
            raise ValueError("the task produced no training examples")
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.wait_seconds = 0.0  # host time spent waiting for the next batch, summed (throughput logging reads it)
        if len(self) == 0:
            raise ValueError(f"{n} training examples are fewer than one batch of {batch_size} with drop_last")

    def __len__(self) -> int:
        """Optimizer steps per epoch."""
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def timed(self, batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """``batches`` with the time each one took to arrive added to ``wait_seconds``: two clock reads a step."""
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.wait_seconds += time.perf_counter() - started
            yield batch

    def _index_batches(self, epoch: int, start: int, device: torch.device | None = None) -> Iterator[torch.Tensor]:
        order = epoch_order(self.n, self.seed, epoch)
        if device is not None:
            order = order.to(device)  # one transfer an epoch, then slices of it
        for k in range(start, len(self)):
            yield order[k * self.batch_size : (k + 1) * self.batch_size]


class DeviceBatches(_Batches):
    """Equal-length tensors on the device, batched by indexing with the epoch's permutation."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device, batch_size: int, seed: int, drop_last: bool):
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"training tensors differ in length: {lengths}")
        self.tensors = {name: t.to(device) for name, t in tensors.items()}
        self.device = device
        super().__init__(next(iter(lengths.values())), batch_size, seed, drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return self.timed(self._epoch(epoch, start))

    def _epoch(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        for index in self._index_batches(epoch, start, self.device):
            yield {name: t[index] for name, t in self.tensors.items()}


class LoaderBatches(_Batches):
    """A map-style Dataset of dicts read through a DataLoader, in the same (seed, epoch) order."""

    def __init__(self, dataset: Dataset, device: torch.device, batch_size: int, seed: int, drop_last: bool, workers: int = 0):
        self.dataset, self.device, self.workers = dataset, device, workers
        super().__init__(len(dataset), batch_size, seed, drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return self.timed(self._epoch(epoch, start))

    def _epoch(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        batches = [index.tolist() for index in self._index_batches(epoch, start)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield {name: t.to(self.device, non_blocking=True) for name, t in batch.items()}


def make_batches(train_data, device: torch.device, batch_size: int, seed: int, drop_last: bool) -> _Batches:
    if isinstance(train_data, dict):
        return DeviceBatches(train_data, device, batch_size, seed, drop_last)
    return LoaderBatches(train_data, device, batch_size, seed, drop_last)
