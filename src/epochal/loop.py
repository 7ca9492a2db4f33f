"""fit(): the one training loop.

    on_fit_start
    while epochs remain and nothing asked to stop:
        on_epoch_start
        for each batch of this epoch, from the saved position on:
            step(batch)                    numerics on the device (step.py), no host sync
            every log_every steps: fetch   losses -> history.jsonl, curves; bad-number policy
            on_step_end                    EMA update, mid-epoch checkpoints
            preempted or asked to stop?    save / leave
        if the epoch finished:
            evaluate when due -> on_eval_end   gate, early stopping, best metric
            on_epoch_end                       checkpoints, result.json
    on_fit_end; test the last and best weights; result.json; model.safetensors

Numerics live in step.py, policy in callbacks, files in records.py and
checkpoint.py. Everything a resume needs is in ``checkpoint_payload``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from epochal import force as force_rules
from epochal import provenance
from epochal.callbacks.base import Callback
from epochal.callbacks.best import BestMetric
from epochal.callbacks.checkpointing import Checkpointing
from epochal.callbacks.early_stopping import EarlyStopping
from epochal.callbacks.ema import EMA
from epochal.callbacks.gate import Gate
from epochal.checkpoint import BackgroundWriter, CheckpointStore, serialize, to_cpu
from epochal.checkpoint import save_safetensors as save_file  # Fit.export_weights writes through epochal.io
from epochal.config import RunConfig, dotted_to_nested, flat, load_toml, resolve
from epochal.data import make_batches
from epochal.errors import CheckpointError, ConfigError, EpochalError
from epochal.lock import LockHeld
from epochal.optim import build_adamw, make_schedule, resolve_warmup_steps
from epochal.records import RunFolder, check_run_names, default_run_id, format_metrics
from epochal.state import TrainState, capture_rng, restore_rng, seed_everything
from epochal.step import Step, StepBuffers, autocast
from epochal.tasks import Built, RunContext, Task, get_task

# Exit code of a run stopped by SIGTERM/SIGINT/SIGUSR1 after saving: EX_TEMPFAIL,
# "try again later", which is what a scheduler's requeue should read.
PREEMPTED_EXIT_CODE = 75
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Settings that may differ on resume without changing the numbers.
RESUME_FREE_KEYS = {"out_dir", "experiment_id", "train.progress"}


@dataclass
class FitResult:
    run_dir: Path
    status: str  # completed, preempted, failed
    stop_reason: str
    metrics: dict[str, float]  # last evaluation
    result: dict  # the whole result.json

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "preempted": PREEMPTED_EXIT_CODE}.get(self.status, 1)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available; allowed here: auto, cpu")
    return device


class Fit:
    """A running fit: what callbacks see as ``fit``."""

    def __init__(self, task: Task, config: RunConfig, folder: RunFolder, built: Built, run: RunContext,
                 callbacks: list[Callback], log: Callable[[str], None] = tqdm.write):
        self.task, self.config, self.folder, self.built, self.run = task, config, folder, built, run
        self.log = log
        train, device = config.train, run.device
        self.model = built.model.to(device)
        forward_model = torch.compile(self.model) if train.compile else self.model
        self.batches = make_batches(built.train_data, device, train.batch_size, train.seed, train.drop_last)
        self.total_steps = train.max_epochs * len(self.batches)
        warmup = resolve_warmup_steps(self.total_steps, config.schedule.warmup_fraction, config.schedule.warmup_steps)
        if warmup >= self.total_steps:
            raise ConfigError(f"schedule.warmup_steps: {warmup} warmup steps, but training has only "
                              f"{self.total_steps} ({train.max_epochs} epochs x {len(self.batches)}); allowed: fewer")
        o = config.optim
        self.optimizer = build_adamw(self.model, o.lr, o.weight_decay, o.betas, o.eps, o.decay_all)
        schedule = make_schedule(config.schedule.kind, warmup, self.total_steps, config.schedule.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = Step(forward_model, task.loss, self.optimizer, self.scheduler, device, train.precision,
                         train.grad_clip, train.grad_accum, train.guard_nonfinite)
        self.state = TrainState()
        self.config_dict, self.config_hash = config.to_dict(), config.hash()
        self.store = CheckpointStore(folder.path / "checkpoints", config.checkpoint.keep_last)
        self.writer = BackgroundWriter(config.checkpoint.async_write)
        self.ema = EMA(self.model, config.ema.decay, config.ema.warmup) if config.ema.enabled else None
        self.gate = Gate(config.gate.above, config.gate.below) if (config.gate.above or config.gate.below) else None
        c = config.checkpoint
        self.best = BestMetric(c.best_metric, c.best_mode) if c.best_metric else None
        es = config.early_stop
        stopper = EarlyStopping(es.metric, es.mode, es.patience, es.min_delta) if es.enabled else None
        policy = [cb for cb in (self.ema, stopper, self.gate, self.best) if cb is not None]
        self.callbacks = [*policy, *task.callbacks(config.task, run), *callbacks, Checkpointing(c)]
        self.preempt_signal: int | None = None
        self._buffers: StepBuffers | None = None
        self._fetched = 0
        self._lrs: list[float] = []
        self._rolled_back = False
        self._last_saved_step = -1

    # ----------------------------------------------------------------- the loop
    def run_loop(self) -> None:
        self.emit("on_fit_start")
        while self.state.epoch < self.config.train.max_epochs and not self.state.should_stop:
            self.emit("on_epoch_start")
            if self.train_epoch():
                self.end_epoch()
        self.fetch()
        self.emit("on_fit_end")

    def train_epoch(self) -> bool:
        """Train from the saved position to the end of the epoch; False if stopped inside it."""
        self._buffers = StepBuffers(len(self.batches), self.run.device)
        self._fetched, self._lrs = self.state.batch_in_epoch, [0.0] * len(self.batches)
        self._rolled_back = False
        started = time.perf_counter()
        bar = tqdm(total=len(self.batches), initial=self.state.batch_in_epoch, leave=False, dynamic_ncols=True,
                   desc=f"epoch {self.state.epoch + 1}/{self.config.train.max_epochs}",
                   disable=not self.config.train.progress)
        try:
            for batch in self.batches.epoch(self.state.epoch, self.state.batch_in_epoch):
                self._lrs[self.state.batch_in_epoch] = self.optimizer.param_groups[0]["lr"]
                self._buffers.write(self.state.batch_in_epoch, self.step(batch))
                self.state.batch_in_epoch += 1
                self.state.step += 1
                if self.state.step % self.config.train.log_every == 0:
                    bar.update(self.fetch())
                    bar.set_postfix(loss=f"{self.state.curves['train_loss'][-1]:.4g}")
                self.emit("on_step_end")
                if self.preempt_signal is not None:
                    self.preempt()
                if self.state.should_stop or self._rolled_back:
                    return False
            bar.update(self.fetch())
        finally:
            bar.close()
            self.state.train_seconds += time.perf_counter() - started
        return not (self.state.status == "failed" or self._rolled_back)

    def end_epoch(self) -> None:
        epoch = self.state.epoch + 1
        due = epoch % self.config.train.eval_every == 0 or epoch == self.config.train.max_epochs
        if due:
            self.state.metrics = self.evaluate()
            for name, value in self.state.metrics.items():
                self.state.curves.setdefault(name, []).append(value)
            self.state.eval_epochs.append(epoch)
            self.emit("on_eval_end", self.state.metrics)
        losses = [x for x in self.state.curves["train_loss"][-len(self.batches):] if math.isfinite(x)]
        summary = {"epoch_end": True, "epoch": epoch, "step": self.state.step,
                   "train_loss": sum(losses) / max(1, len(losses)), "seconds": round(self.state.train_seconds, 3)}
        self.folder.append_history([{**summary, **(self.state.metrics if due else {})}])
        line = f"epoch {epoch}/{self.config.train.max_epochs}  loss {summary['train_loss']:.4g}"
        self.log(f"{line}  {format_metrics(self.state.metrics) if due else ''}".rstrip())
        self.state.epoch, self.state.batch_in_epoch = epoch, 0
        self.emit("on_epoch_end")
        self.write_result()

    # ------------------------------------------------------------ host fetches
    def fetch(self) -> int:
        """Bring the unfetched per-step values to the host; apply the bad-number policy. Returns the count."""
        start, stop = self._fetched, self.state.batch_in_epoch
        if self._buffers is None or stop <= start:
            return 0
        values = self._buffers.fetch(start, stop)
        self._fetched = stop
        first_step = self.state.step - (stop - start) + 1
        records = [{"step": first_step + i, "epoch": self.state.epoch + 1, "lr": self._lrs[start + i],
                    **{name: column[i] for name, column in values.items()}} for i in range(stop - start)]
        self.folder.append_history(records)
        for name, column in values.items():
            if name != "grad_norm":
                self.state.curves.setdefault("train_loss" if name == "loss" else name, []).extend(column)
        # Under fp16 an infinite gradient norm is the scaler's business; a non-finite loss never is.
        checked = ("loss",) if self.config.train.precision == "fp16" else ("loss", "grad_norm")
        bad = [r["step"] for r in records if not all(math.isfinite(r[name]) for name in checked)]
        if bad:
            self.on_bad_numbers(bad)
        return stop - start

    def on_bad_numbers(self, steps: list[int]) -> None:
        """The nan_policy: each bad step was already skipped on the device; decide what follows."""
        self.state.bad_steps.extend(steps)
        policy = self.config.train.nan_policy
        reason = f"non-finite loss or gradient norm at step {steps[0]}"
        if policy == "skip":
            warnings.warn(f"{reason}: optimizer step skipped ({len(self.state.bad_steps)} so far)", stacklevel=2)
        elif policy == "rollback" and self.state.rollbacks < self.config.train.max_rollbacks:
            self.rollback(reason)
        else:
            self.state.status = "failed"
            self.state.stop(reason if policy == "stop" else f"{reason}; rollbacks exhausted")

    def rollback(self, reason: str) -> None:
        self.writer.wait()
        newest = self.store.newest_valid(warn=warnings.warn)
        if newest is None:
            self.state.status = "failed"
            self.state.stop(f"{reason}; no checkpoint to roll back to")
            return
        bad_steps, rollbacks = list(self.state.bad_steps), self.state.rollbacks + 1
        self.restore(newest[1])
        self.state.bad_steps, self.state.rollbacks = bad_steps, rollbacks
        scale = self.config.train.rollback_lr_scale
        self.scheduler.base_lrs = [lr * scale for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= scale
        self.folder.truncate_history(self.state.step, self.state.epoch)
        self._rolled_back = True
        warnings.warn(f"{reason}: rolled back to step {self.state.step}, learning rate x{scale}", stacklevel=2)

    # --------------------------------------------------------------- evaluation
    @contextlib.contextmanager
    def evaluation(self):
        """Eval mode, no grad, EMA weights, and random numbers that neither vary nor disturb training."""
        rng = capture_rng()
        torch.manual_seed(self.config.train.seed)
        was_training = self.model.training
        self.model.eval()
        swap = self.ema.swapped(self.model) if self.ema else contextlib.nullcontext()
        try:
            with torch.no_grad(), autocast(self.run.device, self.config.train.precision), swap:
                yield self.model
        finally:
            self.model.train(was_training)
            restore_rng(rng)

    def evaluate(self) -> dict[str, float]:
        with self.evaluation() as model:
            metrics = self.task.evaluate(model, self.built.eval_context)
        return {name: float(value) for name, value in metrics.items()}

    def test(self) -> dict | None:
        """The task's test metrics on the last weights and, if kept, on best.pt's (seed 003, 5.7)."""
        with self.evaluation() as model:
            last = self.task.test(model, self.built.eval_context)
        if last is None:
            return None
        out = {"last": last}
        if self.best is not None and self.best.epoch is not None:
            current = to_cpu(self.model.state_dict())
            ema_state = to_cpu(self.ema.state_dict()) if self.ema else None
            payload = self.store.load("best.pt")
            self.model.load_state_dict(payload["model"])
            if self.ema:
                self.ema.load_state_dict(payload["callbacks"]["ema"])
            with self.evaluation() as model:
                out["best"] = self.task.test(model, self.built.eval_context)
            self.model.load_state_dict(current)
            if self.ema:
                self.ema.load_state_dict(ema_state)
        return out

    # -------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict:
        return to_cpu({
            "format": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.step.scaler.state_dict() if self.step.scaler else None,
            "callbacks": {cb.key: cb.state_dict() for cb in self.callbacks if cb.key},
            "state": self.state.state_dict(),
            "rng": capture_rng(),
            "config": self.config_dict,
            "config_hash": self.config_hash,
        })

    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.step.scaler and payload["scaler"]:
            self.step.scaler.load_state_dict(payload["scaler"])
        for cb in self.callbacks:
            if cb.key and cb.key in payload["callbacks"]:
                cb.load_state_dict(payload["callbacks"][cb.key])
        self.state.load_state_dict(payload["state"])
        restore_rng(payload["rng"])

    def save_checkpoint(self, name: str, kind: str, links: tuple[str, ...] = (), wait: bool = False) -> None:
        """Copy the state off the device now; serialise and write in the background."""
        self.fetch()
        if self._rolled_back:  # the fetch found bad numbers and reloaded a saved state: nothing new to keep
            return
        payload = self.checkpoint_payload()
        info = {"kind": kind, "step": self.state.step, "epoch": self.state.epoch,
                "batch_in_epoch": self.state.batch_in_epoch,
                "saved": datetime.datetime.now().isoformat(timespec="seconds")}
        store = self.store

        def write() -> None:
            store.write(name, serialize(payload), info)
            for link in ("last.pt", *links):
                store.link(name, link)

        self.writer.submit(write)
        self._last_saved_step = self.state.step
        if wait:
            self.writer.wait()

    def preempt(self) -> None:
        signame = signal.Signals(self.preempt_signal).name
        self.state.status = "preempted"
        self.state.stop(f"preempted by {signame} at step {self.state.step}")
        self.save_checkpoint(f"checkpoint_step_{self.state.step:08d}.pt", "preempt", wait=True)

    # ------------------------------------------------------------------ results
    def result(self) -> dict:
        curves = {"train_loss": self.state.curves.get("train_loss", [])}
        curves.update({k: v for k, v in self.state.curves.items() if k != "train_loss"})
        metadata: dict[str, Any] = {
            "stop_reason": self.state.stop_reason, "bad_steps": self.state.bad_steps,
            "rollbacks": self.state.rollbacks, "config_hash": self.config_hash,
            "train_seconds": round(self.state.train_seconds, 3),
        }
        if self.gate is not None:
            metadata.update(self.gate.metadata())
        return {
            "experiment_id": self.config.experiment_id, "task": self.config.task_name,
            "status": self.state.status, "epochs": self.state.epoch, "steps": self.state.step,
            "metrics": self.state.metrics, "best": self.best.summary() if self.best else None,
            "eval_epochs": self.state.eval_epochs, "curves": curves, "metadata": metadata,
            "checkpoints": sorted(e["file"] for e in self.store.manifest()),
        }

    def write_result(self, extra: dict | None = None) -> dict:
        result = {**self.result(), **(extra or {})}
        self.folder.write_json("result.json", result)
        return result

    def finish(self) -> dict:
        """After the loop: final checkpoint, exported weights, test metrics, result.json."""
        if self.state.status == "running":
            self.state.status = "completed"
            self.state.stop(self.state.stop_reason or "max_epochs reached")
        if self._last_saved_step != self.state.step and self.state.status != "preempted":
            self.save_checkpoint(f"checkpoint_step_{self.state.step:08d}.pt", "step")
        self.writer.wait()
        extra = {}
        if self.state.status == "completed":
            self.export_weights()
            tested = self.test()
            if tested is not None:
                extra["test"] = tested
        return self.write_result(extra)

    def export_weights(self) -> None:
        """model.safetensors (and model_ema.safetensors) for sharing: data only, any framework reads it."""
        folder = self.store.folder
        save_file({k: v.contiguous() for k, v in to_cpu(self.model.state_dict()).items()}, str(folder / "model.safetensors"))
        if self.ema:
            save_file({k: v.contiguous() for k, v in self.ema.shadow.items()}, str(folder / "model_ema.safetensors"))

    def emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)


@contextlib.contextmanager
def _preemption_handlers(fit: Fit):
    """First SIGTERM/SIGINT/SIGUSR1: finish the step, save, exit 75. A second SIGINT aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if fit.preempt_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        fit.preempt_signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in PREEMPT_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resolve_config(task: str | Task | None, config: RunConfig | str | Path | dict | None,
                   overrides: dict[str, Any] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("overrides: give them in the RunConfig or pass a file/dict config instead")
        return config
    base = load_toml(config) if isinstance(config, (str, Path)) else dict(config or {})
    name = task.name if isinstance(task, Task) else task
    if isinstance(task, Task) and not isinstance(getattr(type(task), "name", None), str):
        raise ConfigError("task: a Task instance needs a name")
    return resolve(name, [base, dotted_to_nested(overrides or {})])


def fit(task: str | Task, config: RunConfig | str | Path | dict | None = None, *,
        overrides: dict[str, Any] | None = None, out_dir: str | Path | None = None,
        experiment_id: str | None = None, callbacks: list[Callback] = (), resume: str = "never",
        overwrite: bool = False, force: bool = False, log: Callable[[str], None] = tqdm.write) -> FitResult:
    """Train ``task`` with ``config`` and return the run folder and final metrics.

    ``resume``: "never" (a run folder that exists is an error unless ``overwrite``),
    "auto" (continue the run folder if it has a checkpoint, else start), "must"
    (continue a run folder; one without a checkpoint restarts from step 0).
    ``force`` applies changed settings that can change mid-run (force.py) and
    refuses the others.
    """
    config = resolve_config(task, config, overrides)
    if out_dir is not None:
        config.out_dir = str(out_dir)
    if experiment_id is not None:
        config.experiment_id = experiment_id  # an empty id is refused below, not replaced
    elif not config.experiment_id:
        config.experiment_id = default_run_id(config.task_name)
    check_run_names(config.experiment_id, config.group)
    task_obj = task if isinstance(task, Task) else get_task(config.task_name)
    folder = RunFolder(config.run_dir)
    created = _first_missing(folder.path)
    existing = _claim(folder, config, resume, overwrite, created)
    fit_ = None
    try:
        if hasattr(task_obj, "own_loop"):
            result = task_obj.own_loop(config, folder, log)
            folder.write_json("result.json", result)
            log(f"run folder: {folder.path}")
            return FitResult(folder.path, result["status"], result["metadata"]["stop_reason"], result["metrics"], result)
        fit_ = _prepare(task_obj, config, folder, list(callbacks), created, log)
        resuming = existing and _resume(fit_, force, log)
        if not resuming:
            folder.write_json("env.json", provenance.collect(fit_.run.device, config.train.seed))
        if fit_.state.status in ("completed", "failed"):
            log(f"{folder.path}: already {fit_.state.status} ({fit_.state.stop_reason}); nothing to do")
            result = folder.read_result() or fit_.write_result()
        else:
            if fit_.state.status == "preempted":
                fit_.state.status, fit_.state.should_stop, fit_.state.stop_reason = "running", False, ""
            with _preemption_handlers(fit_):
                fit_.run_loop()
                result = fit_.finish()
        log(f"{result['status']}: {result['metadata']['stop_reason']}")
        log(f"run folder: {folder.path}")
        return FitResult(folder.path, result["status"], result["metadata"]["stop_reason"], result["metrics"], result)
    except BaseException:
        _settle_writes(fit_)
        raise
    finally:
        folder.release()


def _settle_writes(fit_: Fit | None) -> None:
    """On the way out after an error: let a checkpoint write in flight end (complete, or failed and cleaned
    up) before the lock is released, so no other process can take the folder while it is still written."""
    if fit_ is not None:
        try:
            fit_.writer.wait()
        except Exception:  # the error already on its way out is the one to report
            pass


def _claim(folder: RunFolder, config: RunConfig, resume: str, overwrite: bool, created: Path | None) -> bool:
    """Lock the run folder and, unless resuming, write config.toml first: a run killed during a slow
    task build can then be resumed. A start that fails here leaves no folder it made behind."""
    try:
        existing = folder.open(resume, overwrite)
    except LockHeld:
        raise  # the folder is the holder's now, even if this process made it
    except EpochalError:
        folder.remove_created(created)
        raise
    if not existing:
        try:
            folder.write_config(config.to_toml())
        except EpochalError:
            folder.release()
            folder.remove_created(created)
            raise
    return existing


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet: what a failed start should remove."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _prepare(task: Task, config: RunConfig, folder: RunFolder, callbacks: list[Callback], created: Path | None,
             log: Callable[[str], None]) -> Fit:
    """Seed, build the task and the training machinery; a config error removes a folder made for it."""
    try:
        device = pick_device(config.train.device)
        log(provenance.banner(device))
        seed_everything(config.train.seed, config.train.deterministic)
        run = RunContext(folder.path, device, config.train.seed, config)
        built = task.build(config.task, run)
        return Fit(task, config, folder, built, run, callbacks, log)
    except ConfigError:
        folder.remove_created(created, everything=True)
        folder.release()
        raise


def _resume(fit: Fit, force: bool, log: Callable[[str], None]) -> bool:
    newest = fit.store.newest_valid(warn=lambda msg: log(f"warning: {msg}"))
    if newest is None:
        raise CheckpointError(f"{fit.store.folder}: no valid checkpoint to resume from; "
                              f"the files there are left as they are")
    entry, payload = newest
    saved, now = flat(payload["config"]), flat(fit.config.to_dict())
    changes = {k: (saved.get(k), now.get(k)) for k in sorted(saved.keys() | now.keys())
               if saved.get(k) != now.get(k) and k not in RESUME_FREE_KEYS}
    if changes and not force:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:8])
        raise ConfigError(f"config differs from the checkpoint's ({shown}); use --force to resume anyway")
    force_rules.check_forceable(changes)
    fresh = force_rules.snapshot(fit.optimizer)
    fit.restore(payload)
    fit._last_saved_step = fit.state.step
    fit.folder.truncate_history(fit.state.step, fit.state.epoch)
    if changes:
        force_rules.apply(changes, fit.optimizer, fit.scheduler, fresh)
        change_record, notes = force_rules.record(changes, fit.state.step)
        fit.folder.append_history([change_record])
        fit.folder.write_config(fit.config.to_toml(), notes)
        for note in notes:
            log(note.removeprefix("# "))
    log(f"resuming from {entry['file']} (epoch {fit.state.epoch}, step {fit.state.step})")
    return True
