"""Training state that is not the model or optimizer, and the RNG capture that exact resume needs."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field, fields

import numpy as np
import torch


@dataclass
class TrainState:
    """Where training stands and what it has recorded: the loop's own entry in the state registry."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # optimizer steps already done in the current epoch: the data position
    epoch_steps: int = 0  # optimizer steps in the last completed epoch (iterable data has no fixed length)
    step: int = 0  # optimizer steps done in total
    curves: dict[str, list] = field(default_factory=dict)  # per step: train_loss, components; per eval: metrics
    eval_epochs: list[int] = field(default_factory=list)  # epochs completed at each evaluation
    eval_steps: list[int] = field(default_factory=list)  # the optimizer step of each evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # the latest evaluation
    train_seconds: float = 0.0  # wall time spent training, summed over resumes
    stop_reason: str = ""  # why training ended or will end; empty while it goes on
    grad_norm_epoch: int = 0  # the epoch whose gradient norms grad_norm_sum/count hold (history's epoch mean)
    grad_norm_sum: float = 0.0  # finite gradient norms of that epoch's steps, summed
    grad_norm_count: int = 0  # how many there were
    status: str = "running"  # running, completed, gate_failed, preempted, failed (status.py)
    micro_batches: int = 1  # per accumulation chunk: what train.microbatch = "auto" settled on after running out of memory
    val_loss: float | None = None  # the task's own loss on its validation split at the last evaluation
    tested: dict | None = None  # test metrics of the last and the best weights, once training has ended

    @property
    def stopped(self) -> bool:
        return bool(self.stop_reason)

    def stop(self, reason: str, status: str) -> None:
        """Record a Stop decision; the first reason wins."""
        if not self.stopped:
            self.stop_reason, self.status = reason, status

    def resume(self) -> None:
        """Carry out a Resume decision: a preempted run trains on."""
        self.stop_reason, self.status = "", "running"

    def add_grad_norms(self, records: list[dict]) -> None:
        """Fold fetched steps' gradient norms into their epoch's mean (checkpointed: exact across a resume)."""
        for record in records:
            if record["epoch"] != self.grad_norm_epoch:
                self.grad_norm_epoch, self.grad_norm_sum, self.grad_norm_count = record["epoch"], 0.0, 0
            norm = record.get("grad_norm")
            if norm is not None and math.isfinite(norm):
                self.grad_norm_sum += norm
                self.grad_norm_count += 1

    def epoch_grad_norm(self) -> float | None:
        """Mean finite gradient norm of the epoch just finished; None without one."""
        if self.grad_norm_epoch != self.epoch or not self.grad_norm_count:
            return None
        return self.grad_norm_sum / self.grad_norm_count

    def epoch_train_loss(self) -> float:
        """Mean of the finite per-step losses of the epoch just finished."""
        curve = self.curves.get("train_loss", [])
        losses = [x for x in curve[len(curve) - self.epoch_steps:] if math.isfinite(x)]
        return sum(losses) / max(1, len(losses))

    def state_dict(self) -> dict:
        """Curves travel as float64 tensors: exact for the values they hold, and cheap to copy."""
        state = {f.name: copy.copy(getattr(self, f.name)) for f in fields(self)}
        state["curves"] = {name: torch.tensor(values, dtype=torch.float64) for name, values in self.curves.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        fresh = TrainState()  # a field added after the checkpoint was written keeps its default
        for f in fields(self):
            setattr(self, f.name, copy.copy(state.get(f.name, getattr(fresh, f.name))))
        self.curves = {name: values.tolist() for name, values in state["curves"].items()}


def capture_rng() -> dict:
    """Every generator a training step may draw from, as plain tensors and tuples (weights_only-safe)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_matmul_precision(precision: str, deterministic: bool) -> str:
    """torch's float32 matmul precision for this process (TF32 for "high"); deterministic runs get "highest",
    the one that computes the same on every GPU generation. Returns the precision set (env.json records it)."""
    chosen = "highest" if deterministic else precision
    torch.set_float32_matmul_precision(chosen)
    return chosen


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; optionally force deterministic kernels.

    Deterministic mode costs speed on GPU (some kernels fall back to slower
    deterministic versions and cuDNN autotuning is off) and raises an error for
    ops that have no deterministic implementation. On CPU it changes little.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
