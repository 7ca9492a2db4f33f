"""Warm starts: a new run that begins from another run's weights ([init] / --init-from / init_from=).

The source may be a run folder (its last, best or EMA weights), an epochal
checkpoint (.pt, loaded with weights_only and its checksum when it is in a
manifest), a plain state dict saved with torch.save, or a .safetensors file.
With ``strict = false`` what matches is loaded and the missing and unexpected
keys are reported; the parent, its weights hash and those keys go to env.json.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from epochal.checkpoint import folder_weights, load_file, model_weights, read_safetensors, run_weights, tensors_sha256
from epochal.sharded_checkpoint import is_sharded
from epochal.config import InitConfig
from epochal.errors import CheckpointError, ConfigError

ALLOWED = "a run folder, a .pt checkpoint, a sharded checkpoint's .dcp folder or a .safetensors file"
EMA_WEIGHTS = "model_ema.safetensors"  # written at a run's end; last and best come from its checkpoints


def warm_start(model: nn.Module, init: InitConfig, log: Callable[[str], None]) -> dict | None:
    """Load ``init.path``'s weights into ``model`` and freeze ``init.freeze``; the provenance record, or None."""
    record = None
    if init.path:
        state, parent = _source_weights(Path(init.path), init.weights)
        try:
            missing, unexpected = model.load_state_dict(state, strict=init.strict)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ConfigError(f"init.path: {init.path} does not fit the model ({first}); allowed: matching "
                              "weights, or init.strict = false to load what matches") from None
        if missing or unexpected:
            log(f"warm start from {init.path}: {len(missing)} missing keys {missing[:5]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:5]}")
        record = {"path": str(Path(init.path).resolve()), "weights": init.weights, "parent": parent,
                  "weights_sha256": tensors_sha256(state), "missing_keys": missing, "unexpected_keys": unexpected}
    frozen = freeze(model, init.freeze)
    if frozen:
        record = {**(record or {}), "frozen": frozen}
    return record


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Turn off gradients of the parameters whose names match a pattern; every pattern must match one."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(f"init.freeze: {pattern!r} matches no parameter; allowed: patterns over "
                              f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
    frozen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return frozen


def _source_weights(path: Path, which: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    if path.is_dir() and is_sharded(path.name):
        try:
            return folder_weights(path), None
        except CheckpointError as err:
            raise ConfigError(f"init.path: {err}") from None
    if path.is_dir():
        return _run_weights(path, which)
    if not path.exists():
        raise ConfigError(f"init.path: {path} does not exist; allowed: {ALLOWED}")
    if path.suffix == ".safetensors":
        try:
            return read_safetensors(path), None
        except CheckpointError as err:
            raise ConfigError(f"init.path: {err}") from None
    try:
        payload = load_file(path)
    except CheckpointError as err:
        raise ConfigError(f"init.path: {err}") from None
    return _model_state(payload, path), None


def _model_state(payload: dict, path: Path) -> dict[str, torch.Tensor]:
    """An epochal checkpoint's model weights, or a plain state dict as it is."""
    weights = model_weights(payload)
    if weights is not None:
        return weights
    raise ConfigError(f"init.path: {path} holds neither an epochal checkpoint nor a state dict; allowed: {ALLOWED}")


def _run_weights(folder: Path, which: str) -> tuple[dict[str, torch.Tensor], dict]:
    checkpoints = folder / "checkpoints"
    if not checkpoints.is_dir():
        raise ConfigError(f"init.path: {folder} is not a run folder (no checkpoints/); allowed: {ALLOWED}")
    try:
        if which == "ema":
            if not (checkpoints / EMA_WEIGHTS).exists():
                raise ConfigError(f"init.weights: {folder} has no EMA weights ({EMA_WEIGHTS}); allowed: last, best")
            state = read_safetensors(checkpoints / EMA_WEIGHTS)
        else:
            state, _ = run_weights(checkpoints, which)  # a .pt's, or a sharded checkpoint's consolidated
    except CheckpointError as err:
        raise ConfigError(f"init.weights: {err}; allowed: last, best or ema weights the run kept") from None
    result = folder / "result.json"
    parent = {"run_dir": str(folder.resolve())}
    if result.exists():
        summary = json.loads(result.read_text())
        parent.update({key: summary.get(key) for key in ("experiment_id", "task", "status")})
        parent["config_hash"] = summary.get("metadata", {}).get("config_hash")
    return state, parent
