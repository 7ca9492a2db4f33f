"""Checkpoints and runs in your own scripts and notebooks (seed 003 5.4, seed 001's analysis).

    model = MyModel()
    meta = epochal.load_checkpoint("results/run/checkpoints/best.pt", model)
    loaded = epochal.load_run("results/run", weights="best")   # the task's model, config, eval context
    loaded.test()                                               # the task's test metrics of those weights

Everything loads with ``weights_only=True`` and checks the file's SHA-256 against the
run's manifest (or the ``.sha256`` file ``save_checkpoint`` writes next to its file).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epochal.checkpoint import (folder_weights, load_file, make_payload, payload_states, read_manifest,
                                read_safetensors, run_weights, save_weights, serialize, sha256)
from epochal.config import RunConfig, load_toml
from epochal.errors import CheckpointError, EpochalError
from epochal.io import atomic_write_bytes, atomic_write_text
from epochal.run_folder import RunFolder
from epochal.resolve import resolve_config
from epochal.status import GATE_FAILED, gate_failure_line, status_of
from epochal.task import RunContext, Task

SIDECAR = ".sha256"


class GateFailedWarning(UserWarning):
    """A run that never passed its gate was loaded: seed 001 leaves such configs out of analysis.
    ``warnings.simplefilter("error", epochal.GateFailedWarning)`` turns it into a refusal."""


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **meta: Any) -> Path:
    """Write ``model`` (and ``optimizer``) with ``meta`` (epoch, step, metrics, seed, ...) atomically,
    with a ``<path>.sha256`` beside it that ``load_checkpoint`` verifies."""
    path = Path(path)
    states = {"model": model.state_dict()}
    if optimizer is not None:
        states["optimizer"] = optimizer.state_dict()
    data = serialize(make_payload(states, meta=meta))
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + SIDECAR), sha256(data) + "\n")
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu", strict: bool = True) -> dict:
    """Load an epochal checkpoint's weights into ``model`` (and ``optimizer``); returns its metadata
    (epoch, step, metrics, config, meta). The checksum is verified when the run's manifest or a
    ``.sha256`` file vouches for the file; a file holding code is refused, never run."""
    path = Path(path)
    if path.is_dir() and path.suffix == ".dcp":  # a sharded checkpoint: its model, consolidated here
        if optimizer is not None:
            raise CheckpointError(f"{path}: a sharded checkpoint's optimizer state loads by resuming its run "
                                  "(epochal resume); allowed here: the model alone")
        model.load_state_dict(_to(folder_weights(path), map_location), strict=strict)
        return _summary(load_file(path / "state.pt"))
    payload = load_file(path, _expected_sha256(path))
    states = payload_states(payload)
    model.load_state_dict(_to(states["model"], map_location), strict=strict)
    if optimizer is not None:
        if "optimizer" not in states:
            raise CheckpointError(f"{path}: holds no optimizer state")
        optimizer.load_state_dict(states["optimizer"])
    return _summary(payload)


def _summary(payload: dict) -> dict:
    """What ``load_checkpoint`` returns of a checkpoint besides the weights."""
    state = payload_states(payload).get("state", {})
    return {"epoch": state.get("epoch"), "step": state.get("step"), "metrics": state.get("metrics", {}),
            "config": payload.get("config", {}), "meta": payload.get("meta", {})}


def _expected_sha256(path: Path) -> str | None:
    sidecar = path.with_name(path.name + SIDECAR)
    if sidecar.exists():
        return sidecar.read_text().strip()
    entry = next((e for e in read_manifest(path.parent) if e["file"] == path.name), None)
    return entry["sha256"] if entry else None


def _to(tensors: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    return {name: value.to(device) for name, value in tensors.items()}


@dataclass
class LoadedRun:
    """A finished run's model with chosen weights, its resolved config and its task's evaluation context."""

    model: nn.Module
    config: RunConfig
    task: Task
    eval_context: Any

    @contextlib.contextmanager
    def _evaluating(self):
        torch.manual_seed(self.config.train.seed)  # evaluation draws are the run's own
        self.model.eval()
        with torch.no_grad():
            yield self.model

    def evaluate(self) -> dict[str, float]:
        with self._evaluating() as model:
            return {name: float(value) for name, value in self.task.evaluate(model, self.eval_context).items()}

    def test(self) -> dict[str, float] | None:
        with self._evaluating() as model:
            return self.task.test(model, self.eval_context)


def load_run(run_dir: str | Path, weights: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a run folder (built by its task from config.toml) with its last, best or EMA weights.

    The task is built in a temporary folder: the run folder is only read.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise EpochalError(f"{run_dir}: not a run folder (no config.toml); allowed: a folder made by `epochal run`")
    task, config = resolve_config(None, load_toml(run_dir / "config.toml", label=""))
    warn_if_gate_failed(run_dir)
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as scratch:
        built = task.build(config.task, RunContext(Path(scratch), device, config.train.seed, config, saved=run_dir))
    model = built.model.to(device)
    checkpoints = run_dir / "checkpoints"
    if weights == "ema":
        if not (checkpoints / "model_ema.safetensors").exists():
            raise EpochalError(f"{run_dir}: has no EMA weights (model_ema.safetensors); allowed: last, best")
        model.load_state_dict(read_safetensors(checkpoints / "model_ema.safetensors", device))
    elif weights in ("last", "best"):
        try:
            state, _ = run_weights(checkpoints, weights)  # a .pt's, or a sharded checkpoint's consolidated
        except CheckpointError as err:
            raise EpochalError(f"weights: {err}; allowed: last, best or ema weights the run kept") from None
        model.load_state_dict(_to(state, device))
    else:
        raise EpochalError(f"weights: {weights!r}; allowed: last, best, ema")
    return LoadedRun(model, config, task, built.eval_context)


def export(run_dir: str | Path, weights: str, to: str | Path) -> str:
    """``epochal export``: one safetensors file of a run's last, best or EMA weights under the model's own
    parameter names, a sharded checkpoint consolidated in this process; a line saying what was written."""
    run_dir, to = Path(run_dir), Path(to)
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir():
        raise EpochalError(f"{run_dir}: not a run folder (no checkpoints/); allowed: a folder made by `epochal run`")
    if to.suffix != ".safetensors":
        raise EpochalError(f"--to: {to} does not end in .safetensors; allowed: a FILE.safetensors path")
    state, entry = run_weights(checkpoints, weights)
    save_weights(to, state)
    count = sum(value.numel() for value in state.values())
    return (f"{to}: the {weights} weights of {checkpoints / entry['file']} (step {entry['step']}), {len(state)} "
            f"tensors, {count:,} values")


def warn_if_gate_failed(run_dir: Path) -> None:
    """A GateFailedWarning naming the gate failure when result.json says (or, in an older folder, means) one."""
    result = RunFolder(run_dir, writes=False).read_result()
    if result is not None and status_of(result) == GATE_FAILED:
        warnings.warn(f"{run_dir}: {GATE_FAILED}: {gate_failure_line(result)}; a failed config (seed 001 leaves "
                      "it out of analysis)", GateFailedWarning, stacklevel=3)
