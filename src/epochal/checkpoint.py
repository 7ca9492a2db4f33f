"""Checkpoints that can't be half-written, and that load only data, never code.

A write goes to a temporary file in the same folder, is fsynced, renamed into
place, and the folder is fsynced. Only then is the file entered, with its
SHA-256, into ``manifest.json`` (itself replaced atomically): a checkpoint
counts once it is complete. Loading checks the hash and uses
``torch.load(weights_only=True)``, so a file holding arbitrary pickled objects
is refused without running them.

Saving copies the state off the device on the caller's thread (the only stall),
then serialises and writes it on a background thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from epochal.errors import CheckpointError

MANIFEST = "manifest.json"
ROLLING_KINDS = ("epoch", "step", "preempt")
# Test hook: seconds to sleep between written chunks, so a test can kill the
# process in the middle of a checkpoint write.
_WRITE_DELAY_ENV = "EPOCHAL_TEST_WRITE_DELAY"
_CHUNK = 1 << 20


def to_cpu(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU: what a background write may safely hold."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """temp file + fsync + rename + folder fsync: the file is either old or new, never partial."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    delay = float(os.environ.get(_WRITE_DELAY_ENV, "0") or 0)
    try:
        with open(tmp, "wb") as f:
            for start in range(0, len(data), _CHUNK):
                f.write(data[start : start + _CHUNK])
                if delay:
                    f.flush()
                    time.sleep(delay)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def serialize(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_file(path: Path, expected_sha256: str | None = None) -> dict:
    """A checkpoint's payload; CheckpointError if it is truncated, altered or holds code."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or altered)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: refused, it holds objects other than tensors and plain data ({first})") from None
    except Exception as err:  # a damaged zip container raises several different errors
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None


def payload_states(payload: dict) -> dict:
    """The registry states a checkpoint holds, from either format.

    Format 1 (before the state registry) kept fixed top-level keys and the
    callbacks under "callbacks"; it maps onto the registry's names one to one,
    except the bad-step count and rollbacks, which now belong to the NaN policy,
    and the data position, which it kept in "state" alone (its data were tensors).
    """
    version = payload.get("format") if isinstance(payload, dict) else None
    if version == 2:
        return payload["state"]
    if version == 1:
        state = dict(payload["state"])
        nan_policy = {"bad_steps": state.pop("bad_steps", []), "rollbacks": state.pop("rollbacks", 0)}
        state.pop("should_stop", None)
        states = {"model": payload["model"], "optimizer": payload["optimizer"], "scheduler": payload["scheduler"],
                  "state": state, "data": {}, "rng": payload["rng"], "nan_policy": nan_policy,
                  **payload["callbacks"]}
        if payload.get("scaler") is not None:
            states["scaler"] = payload["scaler"]
        return states
    raise CheckpointError(f"checkpoint format {version!r} is not one this version reads; allowed: 1, 2")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors' names, dtypes, shapes and bytes: equal exactly when the weights are."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_manifest(folder: Path) -> list[dict]:
    path = folder / MANIFEST
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["checkpoints"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({err})") from None


def read_checkpoint(folder: Path, name: str) -> dict:
    """A complete checkpoint of a checkpoints/ folder by name, hash-checked; reads, never writes."""
    entry = next((e for e in read_manifest(folder) if e["file"] == name), None)
    if entry is None:
        raise CheckpointError(f"{folder / name}: no such complete checkpoint")
    return load_file(folder / name, entry["sha256"])


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """A model's tensors as safetensors: data only, readable by any framework."""
    tensors = {name: value.contiguous() for name, value in to_cpu(model.state_dict()).items()}
    atomic_write_bytes(path, safetensors_save(tensors))


class CheckpointStore:
    """The checkpoints/ folder: named files, their manifest, retention."""

    def __init__(self, folder: Path, keep_last: int):
        self.folder, self.keep_last = folder, keep_last
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for stale in self.folder.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)

    def manifest(self) -> list[dict]:
        return read_manifest(self.folder)

    def write(self, name: str, data: bytes, info: dict) -> None:
        """Write one checkpoint file and enter it into the manifest; enforce retention."""
        path = self.folder / name
        try:
            atomic_write_bytes(path, data)
        except OSError as err:
            raise CheckpointError(f"{path}: cannot write checkpoint ({err.strerror}); earlier checkpoints are intact") from None
        with self._lock:
            entries = [e for e in self.manifest() if e["file"] != name]
            entries.append({"file": name, "sha256": sha256(data), **info})
            entries = self._retain(entries)
            atomic_write_text(self.folder / MANIFEST, json.dumps({"checkpoints": entries}, indent=1))

    def link(self, source: str, name: str) -> None:
        """Make ``name`` (e.g. last.pt) the same file as ``source`` without writing it twice."""
        with self._lock:
            entries = self.manifest()
            entry = next(e for e in entries if e["file"] == source)
            tmp = self.folder / f".{name}.tmp-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.link(self.folder / source, tmp)
            os.replace(tmp, self.folder / name)
            fsync_dir(self.folder)
            entries = [e for e in entries if e["file"] != name]
            entries.append({**entry, "file": name, "kind": name.removesuffix(".pt")})
            atomic_write_text(self.folder / MANIFEST, json.dumps({"checkpoints": entries}, indent=1))

    def _retain(self, entries: list[dict]) -> list[dict]:
        rolling = sorted((e for e in entries if e["kind"] in ROLLING_KINDS), key=lambda e: e["step"])
        drop = {e["file"] for e in rolling[: max(0, len(rolling) - self.keep_last)]}
        for name in drop:
            (self.folder / name).unlink(missing_ok=True)
        return [e for e in entries if e["file"] not in drop]

    def newest_valid(self, warn=warnings.warn) -> tuple[dict, dict] | None:
        """(entry, payload) of the newest checkpoint that loads; damaged ones are reported and passed over."""
        for entry in sorted(self.manifest(), key=lambda e: (e["step"], e["kind"] != "last"), reverse=True):
            try:
                return entry, load_file(self.folder / entry["file"], entry["sha256"])
            except CheckpointError as err:
                warn(f"skipping checkpoint: {err}")
        return None

    def load_states(self, name: str) -> dict:
        """The registry states (model, optimizer, ema, ...) of a complete checkpoint, from either format."""
        return payload_states(self.load(name))

    def load(self, name: str) -> dict:
        return read_checkpoint(self.folder, name)


class BackgroundWriter:
    """One write at a time on a worker thread; errors surface at the next submit or wait."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job) -> None:
        self.wait()
        if not self.enabled:
            job()
            return
        self._thread = threading.Thread(target=self._run, args=(job,), name="epochal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self, job) -> None:
        try:
            job()
        except BaseException as err:  # reported on the training thread
            self._error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
