"""The run folder: config.toml, env.json, history.jsonl, result.json, and its writer lock.

results/<group>/<experiment_id>/
  config.toml     resolved config, enough to rerun exactly
  env.json        provenance
  history.jsonl   one object per optimizer step and per epoch, appended and flushed
  result.json     status, metrics, curves, gate metadata; replaced atomically
  checkpoints/    see checkpoint.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from epochal.checkpoint import atomic_write_text
from epochal.errors import EpochalError

LOCK = ".lock"


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.history_path = self.path / "history.jsonl"
        self.result_path = self.path / "result.json"
        self._history = None

    def acquire(self) -> None:
        """Claim the folder for this process; a live holder makes this fail, a dead one is taken over."""
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _pid_alive(holder):
                raise EpochalError(f"{self.path}: in use by process {holder} (lock {lock}); wait for it or stop it") from None
            lock.write_text(str(os.getpid()))
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))

    def _close_history(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None

    def release(self) -> None:
        self._close_history()
        lock = self.path / LOCK
        try:
            if int(lock.read_text().strip()) == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def write_json(self, name: str, data: dict) -> None:
        atomic_write_text(self.path / name, json.dumps(finite_or_none(data), indent=1) + "\n")

    def append_history(self, records: list[dict]) -> None:
        if self._history is None:
            self._history = open(self.history_path, "a")
        self._history.write("".join(json.dumps(finite_or_none(r)) + "\n" for r in records))
        self._history.flush()

    def truncate_history(self, step: int, epochs_done: int) -> None:
        """Keep what a checkpoint at (step, epochs_done) already covers; resume rewrites the rest."""
        self._close_history()  # the file is replaced: appends must go to the new one
        if not self.history_path.exists():
            return
        keep = []
        for line in self.history_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                break  # a line cut short by a kill: nothing after it was complete either
            if ("epoch_end" in record and record["epoch"] <= epochs_done) or (
                "epoch_end" not in record and record["step"] <= step
            ):
                keep.append(line)
        atomic_write_text(self.history_path, "".join(line + "\n" for line in keep))

    def read_result(self) -> dict | None:
        if not self.result_path.exists():
            return None
        return json.loads(self.result_path.read_text())


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in metrics.items())
