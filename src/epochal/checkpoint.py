"""Checkpoints that can't be half-written, and that load only data, never code.

A write goes to a temporary file in the same folder, is fsynced, renamed into
place, and the folder is fsynced. Only then is the file entered, with its
SHA-256, into ``manifest.json`` (itself replaced atomically): a checkpoint
counts once it is complete. All writes go through ``epochal.io``. A manifest
that is missing or invalid is rebuilt from the files that verify, and
retention deletes only files the manifest lists. Loading checks the hash and uses
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
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch

from epochal.errors import CheckpointError, EpochalError
from epochal.io import (TEMP_MARK, WriteError, atomic_write_bytes, atomic_write_text, fsync_dir, remove_stale_temps,
                        temp_path)
from epochal.run_folder import MANIFEST, checkpoint_files
from epochal.sharded_checkpoint import (STATE, file_sha256, folder_sha256, is_sharded, remove_stale_folders,
                                        temp_folder, whole_tensors)

ROLLING_KINDS = ("epoch", "step", "preempt")


def to_cpu(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU: what a background write may safely hold."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# What a .pt of this version holds: {"format": FORMAT, "state": the state registry's states by key,
# "config": the run's config, "config_hash", "world_size", "meta": a user's own values}.
FORMAT = 2


def make_payload(states: dict, config: dict | None = None, config_hash: str = "", world_size: int = 1,
                 meta: dict | None = None) -> dict:
    """A checkpoint's content, every tensor copied to the CPU (what a background write may hold)."""
    return to_cpu({"format": FORMAT, "state": states, "world_size": world_size, "config": config or {},
                   "config_hash": config_hash, "meta": meta or {}})


def model_weights(payload: Any) -> dict[str, torch.Tensor] | None:
    """The model's weights of a loaded .pt: an epochal checkpoint's, or a plain state dict as it is;
    None when it is neither."""
    if isinstance(payload, dict) and "format" in payload:
        return payload_states(payload)["model"]
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    return None


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors; CheckpointError if it can't be read."""
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except (safetensors.SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def serialize(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Tensors for sharing, written atomically like every other file of a run."""
    atomic_write_bytes(path, safetensors.torch.save(tensors))


def save_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """A model's tensors (its state_dict) as safetensors (model.safetensors): data only, readable by any framework."""
    save_safetensors({name: value.contiguous() for name, value in to_cpu(weights).items()}, path)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors' names, dtypes, shapes and bytes: equal exactly when the weights are."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    return load_bytes(path, data)


def load_bytes(path: Path, data: bytes) -> dict:
    """Unpickle tensors and plain data only (``weights_only``): a file holding code is refused, not run."""
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
    if version == FORMAT:
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


# What a checkpoint written by the loop holds at least (in either format); a file without these is not ours.
PAYLOAD_KEYS = ("model", "state")
_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_IN_FOLDER = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.][A-Za-z0-9._-]*")  # a sharded checkpoint's files (.metadata too)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(data: Any) -> list[dict]:
    """The entries of a parsed manifest.json; ValueError naming the first problem.

    Each entry's file must be a bare name inside the folder: retention deletes
    files by these names, so a name with a path in it must never get that far.
    """
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise ValueError('expected {"checkpoints": [...]}')
    seen = set()
    for i, entry in enumerate(data["checkpoints"]):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {i} is not an object")
        name = entry.get("file")
        if not isinstance(name, str) or not _BARE_NAME.fullmatch(name):
            raise ValueError(f"entry {i}: 'file' {name!r} is not a file name in this folder")
        if name in seen:
            raise ValueError(f"entry {i}: {name} is listed twice")
        seen.add(name)
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            raise ValueError(f"entry {i} ({name}): 'sha256' is not a SHA-256 hex digest")
        files = entry.get("files")
        if is_sharded(name) and not (isinstance(files, dict) and files and all(
                isinstance(f, str) and _IN_FOLDER.fullmatch(f) and isinstance(h, str) and _SHA256.fullmatch(h)
                for f, h in files.items())):
            raise ValueError(f"entry {i} ({name}): 'files' is not a map of the folder's file names to SHA-256 digests")
        if not isinstance(entry.get("kind"), str):
            raise ValueError(f"entry {i} ({name}): 'kind' missing or not a string")
        for key in ("step", "epoch", "batch_in_epoch"):
            if (key == "step" or key in entry) and not _int(entry.get(key)):
                raise ValueError(f"entry {i} ({name}): {key!r} missing or not a non-negative integer")
    return data["checkpoints"]


def describe(name: str, payload: Any) -> dict:
    """A manifest entry's fields for a loaded checkpoint file; CheckpointError if it is not one of ours."""
    try:
        states = payload_states(payload)
    except (CheckpointError, KeyError, TypeError, AttributeError):
        states = None
    if not isinstance(states, dict) or any(key not in states for key in PAYLOAD_KEYS) or "config" not in payload:
        raise CheckpointError(f"{name}: not an epochal checkpoint (needs model, state and config)")
    state = states["state"]
    if not isinstance(state, dict) or not all(_int(state.get(k)) for k in ("step", "epoch", "batch_in_epoch")):
        raise CheckpointError(f"{name}: its training state has no step, epoch and batch_in_epoch")
    if name.startswith("checkpoint_epoch_"):
        kind = "epoch"
    elif name.startswith("checkpoint_step_"):
        kind = "preempt" if state.get("status") == "preempted" else "step"
    else:  # last.pt, best.pt, checkpoint_gate.pt (or .dcp): named links, never pruned
        kind = stem(name)
    return {"kind": kind, "step": state["step"], "epoch": state["epoch"], "batch_in_epoch": state["batch_in_epoch"]}


def stem(name: str) -> str:
    """A checkpoint's name without its suffix (.pt for a file, .dcp for a sharded checkpoint's folder)."""
    return name.removesuffix(".pt").removesuffix(".dcp")


def load_folder(path: Path, files: dict[str, str] | None) -> dict:
    """A sharded checkpoint's state.pt payload, once every file of the folder matches its hash (``files``;
    None: unchecked, when the manifest is being rebuilt); CheckpointError naming the first that does not."""
    for name, expected in sorted((files or {}).items()):
        try:
            actual = file_sha256(path / name)
        except OSError as err:
            raise CheckpointError(f"{path / name}: cannot read ({err.strerror})") from None
        if actual != expected:
            raise CheckpointError(f"{path / name}: checksum mismatch (truncated or altered)")
    return load_file(path / STATE)


def load_entry(folder: Path, entry: dict, shards_checked: bool = False) -> dict:
    """The payload of a manifest entry, hash-checked: a .pt's, or a sharded checkpoint's state.pt (and every
    file of its folder, unless another rank checked them: ``shards_checked``)."""
    if is_sharded(entry["file"]):
        path = Path(folder) / entry["file"]
        if shards_checked:
            return load_file(path / STATE, entry["files"][STATE])
        return load_folder(path, entry["files"])
    return load_file(Path(folder) / entry["file"], entry["sha256"])


def run_weights(checkpoints: Path, which: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A run's model weights from its checkpoints/ folder and the manifest entry they come from: the ``last`` or
    ``best`` checkpoint's model, or ``ema``, the last checkpoint's EMA shadow; a sharded checkpoint consolidated
    in this process (no process group). CheckpointError naming what is missing."""
    stem_name = "best" if which == "best" else "last"
    entries = [e for e in read_manifest(checkpoints) if e["file"] in (f"{stem_name}.pt", f"{stem_name}.dcp")]
    if not entries:
        raise CheckpointError(f"{checkpoints}: holds no complete {stem_name} checkpoint")
    entry = max(entries, key=lambda e: e["step"])  # a run resumed with train.parallel changed holds both
    states = payload_states(load_entry(checkpoints, entry))
    key = "ema" if which == "ema" else "model"
    if key not in states:
        raise CheckpointError(f"{checkpoints / entry['file']}: holds no {key} weights (the run had ema.enabled off)")
    if is_sharded(entry["file"]):
        return whole_tensors(checkpoints / entry["file"], "ema/shadow" if key == "ema" else "model"), entry
    return (states[key]["shadow"] if key == "ema" else states[key]), entry


def folder_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model of the sharded checkpoint in the folder ``path``, whole, in this process; its files checked
    against the manifest beside it when that lists it."""
    entry = next((e for e in read_manifest(path.parent) if e["file"] == path.name), None)
    load_folder(path, entry["files"] if entry else None)
    return whole_tensors(path, "model")


def read_manifest(folder: Path) -> list[dict]:
    """The checked entries of a checkpoints/ folder's manifest; [] if it has none. Reads, never writes."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({err})") from None
    try:
        return check_manifest(json.loads(text))
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid manifest ({err})") from None


def read_checkpoint(folder: Path, name: str) -> dict:
    """A complete checkpoint of a checkpoints/ folder by name, hash-checked; reads, never writes."""
    entry = next((e for e in read_manifest(folder) if e["file"] == name), None)
    if entry is None:
        raise CheckpointError(f"{Path(folder) / name}: no such complete checkpoint")
    return load_entry(folder, entry)


class CheckpointStore:
    """The checkpoints/ folder: named files, their manifest, retention.

    A missing, unreadable or invalid manifest is rebuilt when the store is opened,
    from the checkpoint files that verify (they load as data and hold a training
    state); files that do not verify are reported and left alone. Retention only
    ever deletes files the manifest lists.
    """

    def __init__(self, folder: Path, keep_last: int, warn: Callable[[str], None] = warnings.warn,
                 writes: bool = True):
        self.folder, self.keep_last = Path(folder), keep_last
        self._lock = threading.Lock()
        if not writes:  # a rank other than 0 under torchrun: it reads what rank 0 writes, and nothing more
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)
        remove_stale_folders(self.folder)
        self._repair(warn)

    def manifest(self) -> list[dict]:
        return read_manifest(self.folder)

    def _repair(self, warn: Callable[[str], None]) -> None:
        path, files = self.folder / MANIFEST, checkpoint_files(self.folder)
        if path.exists() or path.is_symlink():
            try:
                self.manifest()
                return
            except CheckpointError as err:
                problem = str(err)
        elif not files:
            return
        else:
            problem = f"{path}: missing while {len(files)} checkpoint file(s) exist"
        entries, skipped = [], []
        for file in files:
            try:
                entries.append({"file": file.name, **_verified(file), "rebuilt": True})
            except (OSError, CheckpointError) as err:
                skipped.append(f"{file.name} ({getattr(err, 'strerror', None) or err})")
        left = f"; left alone, unverified: {', '.join(skipped)}" if skipped else ""
        if not entries:  # nothing to rebuild from: change nothing, a resume will refuse with one line
            warn(f"{problem}; no checkpoint file verifies{left}")
            return
        if path.is_dir() and not path.is_symlink():
            raise CheckpointError(f"{problem}; cannot rebuild it over a folder; allowed: a manifest.json file")
        self._write_manifest(entries)
        warn(f"{problem}; rebuilt from {len(entries)} verified checkpoint file(s){left}")

    def _write_manifest(self, entries: list[dict]) -> None:
        try:
            atomic_write_text(self.folder / MANIFEST, json.dumps({"checkpoints": entries}, indent=1))
        except WriteError as err:
            raise CheckpointError(f"{err.path}: cannot update the manifest ({err.strerror}); "
                                  f"earlier checkpoints are intact") from None

    def enter_folder(self, tmp: Path, name: str, files: dict[str, str], info: dict) -> None:
        """Rename a complete sharded checkpoint's folder into place, list it with each file's hash; retention."""
        with self._lock:
            replaced = self._entry(name)
            self._unlist(name)
            try:
                self._replace_folder(tmp, replaced)
            except OSError as err:
                raise CheckpointError(f"{self.folder / name}: cannot write checkpoint ({err.strerror}); earlier "
                                      "checkpoints are intact") from None
            entries = [e for e in self.manifest() if e["file"] != name]
            entries.append({"file": name, "sha256": folder_sha256(files), "files": files, **info})
            self._write_manifest(self._retain(entries))

    def _entry(self, name: str) -> dict | None:
        return next((e for e in self.manifest() if e["file"] == name), None)

    def _replace_folder(self, tmp: Path, replaced: dict | None) -> None:
        """``tmp`` renamed to its checkpoint's name; a folder already there goes only if the manifest listed it
        (``replaced``: its entry), and only the files it listed."""
        target = self.folder / tmp.name.removeprefix(".").rsplit(TEMP_MARK, 1)[0]
        if target.exists() or target.is_symlink():
            if replaced is None or not target.is_dir() or target.is_symlink():
                raise CheckpointError(f"{target}: is in the way and no checkpoint the manifest lists; it is left as "
                                      "it is; allowed: move it out of the checkpoints folder")
            aside = temp_folder(self.folder, f"{target.name}-replaced")
            os.replace(target, aside)
            os.replace(tmp, target)
            _remove_listed(aside, replaced["files"])
        else:
            os.replace(tmp, target)
        fsync_dir(self.folder)

    def write(self, name: str, data: bytes, info: dict) -> None:
        """Write one checkpoint file and enter it into the manifest; enforce retention."""
        path = self.folder / name
        with self._lock:
            self._unlist(name)
        try:
            atomic_write_bytes(path, data)
        except WriteError as err:
            raise CheckpointError(f"{path}: cannot write checkpoint ({err.strerror}); earlier checkpoints are intact") from None
        with self._lock:
            entries = [e for e in self.manifest() if e["file"] != name]
            entries.append({"file": name, "sha256": sha256(data), **info})
            entries = self._retain(entries)
            self._write_manifest(entries)

    def link(self, source: str, name: str) -> None:
        """Make ``name`` (e.g. last.pt) the same file as ``source`` without writing it twice (a sharded
        checkpoint: a folder of the same files, each a hard link)."""
        if is_sharded(source):
            self._link_folder(source, name)
            return
        with self._lock:
            entries = self._unlist(name)
            entry = next(e for e in entries if e["file"] == source)
            tmp = temp_path(self.folder / name)
            try:
                tmp.unlink(missing_ok=True)
                os.link(self.folder / source, tmp)
                os.replace(tmp, self.folder / name)
                fsync_dir(self.folder)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise CheckpointError(f"{self.folder / name}: cannot link to {source} ({err.strerror}); "
                                      f"earlier checkpoints are intact") from None
            self._write_manifest([*entries, {**entry, "file": name, "kind": name.removesuffix(".pt")}])

    def _link_folder(self, source: str, name: str) -> None:
        with self._lock:
            replaced = self._entry(name)
            entries = self._unlist(name)
            entry = next(e for e in entries if e["file"] == source)
            tmp = temp_folder(self.folder, name)
            try:
                if tmp.is_dir():  # a link a kill interrupted: its files are hard links of listed ones
                    _remove_listed(tmp, entry["files"])
                tmp.mkdir()
                for file in entry["files"]:
                    os.link(self.folder / source / file, tmp / file)
                fsync_dir(tmp)
                self._replace_folder(tmp, replaced)
            except OSError as err:
                raise CheckpointError(f"{self.folder / name}: cannot link to {source} ({err.strerror}); "
                                      f"earlier checkpoints are intact") from None
            self._write_manifest([*entries, {**entry, "file": name, "kind": stem(name)}])

    def _unlist(self, name: str) -> list[dict]:
        """Take ``name`` out of the manifest before its file is replaced, so that no failure in between
        can leave the manifest vouching for content the file no longer has. Returns the other entries."""
        entries = self.manifest()
        others = [e for e in entries if e["file"] != name]
        if len(others) != len(entries):
            self._write_manifest(others)
        return others

    def _retain(self, entries: list[dict]) -> list[dict]:
        """One rolling checkpoint a step, the newest written (a step saved twice, e.g. a preemption at an
        epoch's last batch and, after the resume, that epoch's end, supersedes itself), and of those the
        last keep_last; only files the manifest lists are deleted."""
        rolling = [e for e in entries if e["kind"] in ROLLING_KINDS]
        newest_at = {e["step"]: e["file"] for e in rolling}  # entries are in the order they were written
        drop = {e["file"] for e in rolling if newest_at[e["step"]] != e["file"]}
        distinct = sorted((e for e in rolling if e["file"] not in drop), key=lambda e: e["step"])
        drop |= {e["file"] for e in distinct[: max(0, len(distinct) - self.keep_last)]}
        for entry in (e for e in entries if e["file"] in drop):
            path = self.folder / entry["file"]
            if is_sharded(entry["file"]) and path.is_dir() and not path.is_symlink():
                _remove_listed(path, entry["files"])
            elif path.is_file() and not path.is_symlink():
                path.unlink()
        return [e for e in entries if e["file"] not in drop]

    def newest_valid(self, warn=warnings.warn) -> tuple[dict, dict] | None:
        """(entry, payload) of the newest checkpoint that loads; damaged ones are reported and passed over."""
        for entry in sorted(self.manifest(), key=lambda e: (e["step"], e["kind"] != "last"), reverse=True):
            try:
                return entry, load_entry(self.folder, entry)
            except CheckpointError as err:
                warn(f"skipping checkpoint: {err}")
        return None

    def load(self, name: str) -> dict:
        return read_checkpoint(self.folder, name)

    def load_states(self, name: str) -> dict:
        """The registry states (model, optimizer, ema, ...) of a complete checkpoint, from either format."""
        return payload_states(self.load(name))


def _verified(path: Path) -> dict:
    """A manifest entry's fields for a checkpoint file or folder found without one."""
    if path.is_dir():
        files = {file.name: file_sha256(file) for file in sorted(path.iterdir()) if file.is_file()}
        return {"sha256": folder_sha256(files), "files": files, **describe(path.name, load_folder(path, None))}
    data = path.read_bytes()
    return {"sha256": sha256(data), **describe(path.name, load_bytes(path, data))}


def _remove_listed(folder: Path, files: dict[str, str]) -> None:
    """A sharded checkpoint's folder: the files it lists, then the folder if nothing else is left in it."""
    for name in files:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something the manifest does not account for: left where it is
        pass


class BackgroundWriter:
    """One write at a time on a worker thread; errors surface at the next submit or wait.

    Whatever a write raises reaches the training thread as a CheckpointError naming the
    file (a bug or an unpicklable state is one line too, not a traceback); nothing is
    swallowed, so a run whose checkpoint failed never ends as completed.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None], what: str = "checkpoint") -> None:
        self.wait()
        if not self.enabled:
            _checked(job, what)
            return
        self._thread = threading.Thread(target=self._run, args=(job, what), name="epochal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self, job: Callable[[], None], what: str) -> None:
        try:
            _checked(job, what)
        except BaseException as err:  # reported on the training thread
            self._error = err

    def check(self) -> None:
        """Raise the error of a write that has failed, without waiting for one still running."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _checked(job: Callable[[], None], what: str) -> None:
    """Run a write; an error that is not already one line for the user becomes one (the cause stays chained)."""
    try:
        job()
    except EpochalError:
        raise
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{what}: cannot write checkpoint ({type(err).__name__}: {detail}); "
                              f"earlier checkpoints are intact") from err
