"""``epochal.run(task, config)``: resolve, claim the run folder, build, resume, train, report.

Everything here happens around the loop (loop.py); nothing here changes the numbers.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from epochal import console
from epochal import force as force_rules
from epochal import provenance
from epochal.callbacks.base import Callback
from epochal.checkpoint import tensors_sha256
from epochal.config import RunConfig, flat
from epochal.distributed import World
from epochal.errors import CheckpointError, ConfigError, EpochalError
from epochal.loop import train
from epochal.lock import LockHeld
from epochal.run_folder import RunFolder, check_run_names, default_run_id
from epochal.resolve import resolve_config
from epochal.sharding import check_world
from epochal.training import Training
from epochal.signals import PREEMPTED_EXIT_CODE, Interrupted, PreemptionSignals
from epochal.status import COMPLETED, FINISHED, GATE_FAILED, GATE_FAILED_EXIT_CODE, gate_failure_line, status_of
from epochal.state import seed_everything, set_matmul_precision
from epochal.step import amp_precision
from epochal.task import RunContext, Task
from epochal.warm_start import warm_start

# Settings that may differ on resume without changing the numbers (and every [log] setting: trackers,
# plots and profiling only watch).
# compile and cuda_graphs change how the step runs, not what it computes (compiled kernels round within
# the tolerance the README states), so a run may switch them when it resumes.
RESUME_FREE_KEYS = {"out_dir", "experiment_id", "train.progress", "train.compile", "train.cuda_graphs"}


@dataclass
class Result:
    run_dir: Path
    status: str  # completed, gate_failed, preempted, failed (status.py)
    stop_reason: str
    metrics: dict[str, float]  # last evaluation
    result: dict  # the whole result.json

    @property
    def exit_code(self) -> int:
        return {COMPLETED: 0, GATE_FAILED: GATE_FAILED_EXIT_CODE, "preempted": PREEMPTED_EXIT_CODE}.get(self.status, 1)

    def _checkpoint_file(self, name: str) -> Path | None:
        path = self.run_dir / "checkpoints" / name
        return path if path.exists() else None

    @property
    def weights(self) -> Path | None:
        """model.safetensors: the last weights of a completed run."""
        return self._checkpoint_file("model.safetensors")

    @property
    def best_weights(self) -> Path | None:
        """best.pt (under train.parallel = "fsdp" the folder best.dcp): the checkpoint of the best evaluation
        (checkpoint.best_metric); epochal.load_checkpoint takes either."""
        return self._checkpoint_file("best.pt") or self._checkpoint_file("best.dcp")

    @property
    def ema_weights(self) -> Path | None:
        """model_ema.safetensors: the EMA weights of a completed run."""
        return self._checkpoint_file("model_ema.safetensors")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available; allowed here: auto, cpu")
    return device


def run(task: str | Task, config: RunConfig | str | Path | dict | None = None, *,
        overrides: dict[str, Any] | None = None, out_dir: str | Path | None = None,
        experiment_id: str | None = None, callbacks: list[Callback] = (), resume: str = "never",
        overwrite: bool = False, force: bool = False, log: Callable[[str], None] = tqdm.write) -> Result:
    """Train ``task`` with ``config`` and return the run folder and final metrics.

    ``resume``: "never" (a run folder that exists is an error unless ``overwrite``),
    "auto" (continue the run folder if it has a checkpoint, else start), "must"
    (continue; error if there is nothing to continue). ``force`` accepts a config
    that differs from the checkpoint's.

    Under torchrun every process calls this; they train one run with DistributedDataParallel,
    rank 0 writes its folder, and a group torchrun restarted (--max-restarts) resumes it.
    """
    task_obj, config = resolve_config(task, config, overrides)
    world = World.from_env()
    resume, overwrite = start_mode(world, resume, overwrite)
    if not world.main:
        log = _silent  # rank 0 speaks for the run
    if out_dir is not None:
        config.out_dir = str(out_dir)
    if experiment_id is not None:
        config.experiment_id = experiment_id  # an empty id is refused below, not replaced
    elif not config.experiment_id:
        config.experiment_id = default_run_id(task_obj.name)
    elif resume == "never" and not overwrite:
        check_run_names(config.experiment_id, config.group)  # checked before the folder is looked up
        if RunFolder(config.run_dir).path.exists():
            # An id that came with a config (`--config results/X/config.toml`) is a default, not a collision.
            taken, config.experiment_id = config.experiment_id, default_run_id(task_obj.name)
            log(f"run folder {taken!r} exists; this run is {config.experiment_id!r}")
    check_run_names(config.experiment_id, config.group)
    device = pick_device(config.train.device)
    if world.size > 1 and task_obj.trains_itself:
        raise ConfigError(f"task {task_obj.name!r} trains with its own loop; allowed under torchrun: one process")
    device = world.join(device)
    if config.train.precision == "amp":  # resolved once, here: config.toml and the checkpoints record which
        config.train.precision = amp_precision(device)
    note = check_world(config.train, world.size, device)
    if note:
        log(note)
    with PreemptionSignals(agreed=world.size > 1) as signals, contextlib.ExitStack() as stack:
        config.experiment_id = world.broadcast(config.experiment_id)  # rank 0's, drawn or renamed above
        folder = RunFolder(config.run_dir, writes=world.main)
        if signals.received is not None:
            raise Interrupted(signals.received)  # before the run folder was made
        created = _first_missing(folder.path)
        existing = world.broadcast(world.together(
            lambda: _claim(folder, config, resume, overwrite, created) if world.main else None))
        run_ = None
        warned = _WarningRecords(folder)
        try:
            stack.enter_context(console.recording(warned))
            _check_shared(world, folder, created)
            if task_obj.trains_itself:
                result = task_obj.own_loop(config, folder, log)
                folder.write_json("result.json", result)
                return _finished(folder, result, log)
            run_, origin = world.together(lambda: _prepare(task_obj, config, folder, list(callbacks), signals,
                                                           created, log, device, world, existing))
            resuming = existing and world.together(lambda: _resume(run_, force, log))
            ranks = {"distributed": world.describe(run_.device)} if world.size > 1 else {}
            if not resuming:
                folder.write_json("env.json", {**provenance.collect(run_.device, config.train.seed), **origin,
                                               **ranks})
            warned.training(run_)  # the run is taken (a resume that finds it finished too): its warnings are its own
            finished = _already_finished(run_)
            if finished is not None:
                log(f"{folder.path}: already {status_of(finished)} ({finished['metadata']['stop_reason']}); "
                    "nothing to do")
                return _finished(folder, finished, log)
            result = train(run_)
            world.barrier()  # no rank leaves while rank 0 still writes: torchrun would stop it
            return _finished(folder, result, log)
        except BaseException:
            _settle_writes(run_)
            raise
        finally:
            stack.close()  # no warning is recorded into a folder this process no longer holds
            folder.release()


def start_mode(world: World, resume: str, overwrite: bool) -> tuple[str, bool]:
    """(resume, overwrite) for this start: as asked, except that a group torchrun restarted after a failure
    (--max-restarts) continues from the last checkpoint."""
    return ("auto", False) if world.restarts else (resume, overwrite)


def _check_shared(world: World, folder: RunFolder, created: Path | None) -> None:
    """Under torchrun, refuse a run folder some rank cannot see; the start removes what it made for it."""
    try:
        world.check_shared(folder.path)
    except EpochalError:
        if world.main:
            folder.remove_created(created, everything=True)
        raise


class _WarningRecords:
    """The warnings the command line shows during a run, as history lines. Held until the run trains (a
    refused resume leaves the folder as it was) and then written at the step it starts from; later ones at
    once, at the run's step. One may come from the checkpoint writer's thread."""

    def __init__(self, folder: RunFolder):
        self.folder, self.run, self.held = folder, None, []
        self._lock = threading.Lock()

    def __call__(self, category: str, message: str) -> None:
        with self._lock:
            self.held.append({"event": "warning", "step": 0, "category": category, "message": message})
            if self.run is not None:
                self._write()

    def training(self, run: Training) -> None:
        with self._lock:
            self.run = run
            self._write()

    def _write(self) -> None:
        records, self.held = self.held, []
        for record in records:
            record["step"] = self.run.state.step
        try:
            self.folder.append_history(records)
        except EpochalError:  # a full disk is reported where the run itself writes; a warning must never raise
            pass


def _silent(_message: str) -> None:
    """The log of torchrun's ranks other than 0."""


def _settle_writes(run: Training | None) -> None:
    """On the way out after an error: let a checkpoint write in flight end (complete, or failed and cleaned
    up) before the lock is released, so no other process can take the folder while it is still written."""
    if run is not None:
        try:
            run.writer.wait()
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


def _already_finished(run: Training) -> dict | None:
    """result.json of a run with nothing left to train: its checkpoint holds a final status, or it stands at the
    end of its budget (a last epoch checkpoint written before the status was) and result.json says how it ended."""
    state = run.state
    if state.status in FINISHED:
        return run.folder.read_result() or run.result()
    if state.stopped or not run.out_of_budget():
        return None  # --force may have lengthened the budget: then it trains on
    result = run.folder.read_result()
    if result is None or result.get("steps") != state.step or status_of(result) not in FINISHED:
        return None
    return result


def _finished(folder: RunFolder, result: dict, log: Callable[[str], None]) -> Result:
    """The last lines: where the run folder is, then how the run ended (a script reads the last line)."""
    status = status_of(result)
    log(f"run folder: {folder.path}")
    if status == GATE_FAILED:
        log(f"{status}: {gate_failure_line(result)} (exit code {GATE_FAILED_EXIT_CODE})")
    else:
        log(f"{status}: {result['metadata']['stop_reason']}")
    return Result(folder.path, status, result["metadata"]["stop_reason"], result["metrics"], result)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet: what a failed start should remove."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _prepare(task: Task, config: RunConfig, folder: RunFolder, callbacks: list[Callback],
             signals: PreemptionSignals, created: Path | None, log: Callable[[str], None], device: torch.device,
             world: World, resuming: bool = False) -> tuple[Training, dict]:
    """Seed, build the task and the run; returns it with the provenance of its starting point (initial
    weights hash, warm start, data) for env.json. A config error removes a folder made for it."""
    try:
        log(provenance.banner(device))
        if world.size > 1:
            log(f"torchrun: {world.size} processes, {world.backend}; rank 0 writes {folder.path}")
        warnings = provenance.startup_warnings(device, config.train.expected_gpus,
                                               config.train.expected_cuda_visible_devices)
        for warning in warnings:
            log(f"warning: {warning}")
        seed_everything(config.train.seed, config.train.deterministic)
        set_matmul_precision(config.train.matmul_precision, config.train.deterministic)
        context = RunContext(folder.path, device, config.train.seed, config, saved=folder.path if resuming else None)
        built = task.build(config.task, context)
        init = warm_start(built.model, config.init, log)
        run = Training(task, config, folder, built, context, callbacks, signals, log, world)
        if world.rank:  # each rank draws its own random numbers (dropout); rank 0 as a single process would
            seed_everything(config.train.seed + 1_000_003 * world.rank, config.train.deterministic)
        origin = {"initial_weights_sha256": tensors_sha256(run.whole_weights()), "init": init,
                  "data": run.batches.describe(), "startup_warnings": warnings}
        return run, origin
    except ConfigError:
        if world.main:
            folder.remove_created(created, everything=True)
        folder.release()
        raise


def _resume(run: Training, force: bool, log: Callable[[str], None]) -> bool:
    """Continue the run folder's newest valid checkpoint; a config that differs from the one it was written
    with is refused unless ``force`` (force.py says what may change)."""
    changes: dict[str, tuple[Any, Any]] = {}

    def check(payload: dict) -> None:
        saved, now = flat(payload["config"]), flat(run.config.to_dict())
        # A setting the checkpoint does not know was added by a later version: it is taken as it is now.
        changes.update({k: (saved[k], now.get(k)) for k in sorted(saved)
                        if saved[k] != now.get(k) and k not in RESUME_FREE_KEYS and not k.startswith("log.")})
        if changes and not force:
            shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:8])
            raise ConfigError(f"config differs from the checkpoint's ({shown}); use --force to resume anyway")
        force_rules.check_forceable(changes)

    fresh = force_rules.snapshot(run.optimizer)
    newest = run.load_checkpoint(lambda msg: log(f"warning: {msg}"), check)
    if newest is None:
        raise CheckpointError(f"{run.store.folder}: no valid checkpoint to resume from; the files there are left "
                              f"as they are; to start over from step 0: epochal resume {run.folder.path} --restart")
    entry, payload = newest
    if changes:
        force_rules.apply(changes, run.optimizer, run.scheduler, fresh)
        change_record, notes = force_rules.record(changes, run.state.step)
        run.folder.append_history([change_record])
        run.folder.write_config(run.config.to_toml(), notes)
        for note in notes:
            log(note.removeprefix("# "))
    log(f"resuming from {entry['file']} (epoch {run.state.epoch}, step {run.state.step})")
    saved_world = payload.get("world_size", 1)
    if saved_world != run.world.size:
        log(f"the checkpoint was written by {saved_world} process(es), this run has {run.world.size}: the data "
            f"continues at the same global batch, but random draws (dropout) differ from an uninterrupted run")
    if not run.batches.exact_resume and run.state.batch_in_epoch:  # a cost that grows with the position: said
        log(f"epoch {run.state.epoch + 1} resumes by skipping the {run.state.batch_in_epoch} batches already "
            f"trained on, read again (exact when every pass yields the same batches): {run.batches.skip_reason}")
    return True
