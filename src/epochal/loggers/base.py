"""The shared part of every tracker logger: listen to the loop, write from a background thread.

A logger is a listening callback. On the training thread it only puts what the loop
already fetched on a queue (no host sync, no I/O); one worker thread per logger turns
those events into tracker calls. A tracker call that raises disables that logger with
one warning line: training goes on, history.jsonl and the other trackers keep every value.

What reaches a tracker, each value at its own step:

  train/<name>   every per-step record: loss and its components, lr, grad_norm
  perf/<name>    throughput and memory, once per log interval (epochal.loggers.perf)
  eval/<name>    each evaluation's metrics, and eval/gate_passed where a gate is set
  test/<weights>/<name>, the status and the stop reason: the final summary
  the resolved config as hyperparameters, once at the start

Resume: ``open`` gets the step the run resumes from; a tracker drops or purges what a
killed process wrote after it, so no step is missing or written twice. A rollback
(nan_policy) shows up as a step at or below one already written: ``rewind`` hears of it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from epochal.callbacks.base import Callback
from epochal.config import flat
from epochal.loggers.perf import PERF_KEYS

# How long a checkpoint waits for a tracker to report its run id (once, at the first save).
OPEN_TIMEOUT_SECONDS = 120.0
_RECORD_META = ("step", "epoch")


@dataclass
class TrackedRun:
    """What a tracker needs to open (or reopen) its run; plain values, safe to hand to another thread."""

    dir: Path  # the run folder
    name: str  # experiment_id
    group: str  # config.group
    task: str  # task name
    out_dir: Path  # where run folders live
    config: dict[str, Any]  # the resolved config, nested as in config.toml
    start_step: int  # 0 for a fresh run; the checkpoint's step on resume

    @property
    def params(self) -> dict[str, Any]:
        """The config flattened to dotted keys: tracker hyperparameters."""
        return flat(self.config)


def step_values(records: list[dict[str, float]]) -> list[tuple[int, dict[str, float]]]:
    """Per-step records as (step, {tracker tag: value}): train/* for the step's values, perf/* for throughput."""
    out = []
    for record in records:
        values = {f"{'perf' if name in PERF_KEYS else 'train'}/{name}": value
                  for name, value in record.items() if name not in _RECORD_META}
        out.append((int(record["step"]), values))
    return out


def gate_passed(config: dict[str, Any], metrics: dict[str, float]) -> float | None:
    """1.0 / 0.0 when the config sets a gate and this evaluation passes / fails it; None without a gate."""
    gate = config.get("gate", {})
    above, below = gate.get("above", {}), gate.get("below", {})
    if not (above or below):
        return None
    passed = all(m in metrics and metrics[m] > v for m, v in above.items()) and all(
        m in metrics and metrics[m] < v for m, v in below.items())
    return float(passed)


def summary_of(result: dict) -> dict[str, Any]:
    """The final summary of result.json: status, reasons, best, test metrics as test/<weights>/<name>."""
    meta = result.get("metadata", {})
    summary: dict[str, Any] = {"status": result.get("status"), "stop_reason": meta.get("stop_reason", ""),
                               "epochs": result.get("epochs"), "steps": result.get("steps")}
    for key in ("failure_reason", "gate_passed", "gate_epoch", "train_seconds"):
        if meta.get(key) is not None:
            summary[key] = meta[key]
    best = result.get("best") or {}
    if best.get("value") is not None:
        summary[f"best/{best['metric']}"] = best["value"]
        summary["best/epoch"] = best["epoch"]
    for weights, metrics in (result.get("test") or {}).items():
        summary.update({f"test/{weights}/{name}": value for name, value in (metrics or {}).items()})
    return summary


class TrackerLogger(Callback):
    """Base of the tracker loggers; subclasses implement the tracker calls, all run on the worker thread."""

    tracker = ""  # the name in log.trackers

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._opened = threading.Event()
        self.disabled = False
        self.last_step = -1  # the newest step handed to the tracker (worker thread)
        self._warn: Callable[[str], None] = print
        self._config: dict = {}  # the run's config as a dict, taken when the run starts

    # ------------------------------------------------------------- tracker calls (worker thread)
    def import_library(self) -> None:
        """Import the tracker's package: called while the run is built, so a slow import (seconds for
        some trackers) happens before training instead of competing with it for the interpreter."""

    def open(self, info: TrackedRun) -> None:
        """Create or reopen the tracker's run; resumed at ``info.start_step`` when it is > 0."""

    def write(self, step: int, values: dict[str, float]) -> None:
        """Values of one step."""
        raise NotImplementedError

    def write_many(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """The steps of one log interval, in order; a tracker with a batch call overrides this."""
        for step, values in rows:
            self.write(step, values)

    def rewind(self, step: int) -> None:
        """A rollback: steps from ``step`` on are written again with new values."""

    def flush(self) -> None:
        """After each batch of writes: make them visible to readers."""

    def close(self, summary: dict[str, Any]) -> None:
        """The final summary, then release the tracker's run."""

    # --------------------------------------------------------------------------- loop events
    def on_fit_start(self, run) -> None:
        self._warn = run.print
        self._config = run.config.to_dict()
        info = TrackedRun(Path(run.dir), run.config.experiment_id, run.config.group, run.config.task_name,
                       Path(run.config.out_dir), self._config, run.state.step)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name=f"epochal-{self.tracker}", daemon=True)
            self._worker.start()
        self._submit(self._open, info)

    def on_log(self, run, step: int, records: list[dict[str, float]]) -> None:
        self._submit(self._write_steps, [dict(record) for record in records])  # the worker's own copy

    def on_eval_end(self, run, metrics: dict[str, float]) -> None:
        values = {f"eval/{name}": value for name, value in metrics.items()}
        passed = gate_passed(self._config, metrics)
        if passed is not None:
            values["eval/gate_passed"] = passed
        values["eval/epoch"] = float(run.state.epoch)
        self._submit(self._write_eval, run.state.step, values)

    def on_fit_end(self, run) -> None:
        self._submit(self._close, summary_of(run.result()))
        self.wait()

    def wait(self) -> None:
        """Block until the worker has written everything queued (and closed, after on_fit_end)."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    # ------------------------------------------------------------------------------- worker
    def _submit(self, fn: Callable, *args: Any) -> None:
        if not self.disabled:
            self._queue.put((fn, args))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            if self.disabled:
                continue
            try:
                fn(*args)
            except Exception as err:  # any tracker failure: drop this tracker, never the run
                self.disabled = True
                self._opened.set()
                lines = str(err).strip().splitlines()
                detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
                self._warn(f"warning: {self.tracker} logger disabled ({detail}); training goes on, "
                           "history.jsonl keeps every value")

    def _open(self, info: TrackedRun) -> None:
        try:
            self.open(info)
            self.last_step = info.start_step
        finally:
            self._opened.set()

    def _write_steps(self, records: list[dict[str, float]]) -> None:
        rows = step_values(records)  # one fetch: steps in order, so only its first can go back
        if rows[0][0] <= self.last_step:
            self.rewind(rows[0][0])
        self.write_many(rows)
        self.last_step = rows[-1][0]
        self.flush()

    def _write_eval(self, step: int, values: dict[str, float]) -> None:
        self.write(step, values)
        self.flush()

    def _close(self, summary: dict[str, Any]) -> None:
        self.close(summary)

    # ------------------------------------------------------------------ state (run ids)
    def wait_opened(self) -> None:
        """A checkpoint records the run id: wait (once) until the worker has opened the tracker's run."""
        self._opened.wait(OPEN_TIMEOUT_SECONDS)
