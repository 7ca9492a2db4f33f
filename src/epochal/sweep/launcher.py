"""``epochal sweep --launcher slurm``: the sweep's workers as one SLURM job array, through submitit.

Each array task runs the same worker as a local worker process (worker.py) against the shared
study (the journal file on a shared file system, or ``--storage postgresql://...``).

Who owns the time-limit signal. SLURM sends SIGUSR2 ``signal_delay_s`` before the time limit
(submitit's ``--signal=USR2@...``), and submitit binds SIGUSR2 in the job to a handler that
checkpoints the submission, requeues the job and exits at once: called mid-step, that would exit
before the run had saved. So while the worker works, ``SweepJob`` holds SIGUSR2 itself and turns
it into SIGUSR1, epochal's preemption signal: the run saves a checkpoint at the next step, the
trial is marked for retry and the worker returns 75. Only then does the job call submitit's own
handler, which requeues the job (``Checkpointable``: the same worker, so the requeued job takes
the retry and its run continues from that checkpoint, as ``--resume`` does) and exits. SIGTERM
(a ``scancel``, or a preemption SLURM requeues by itself) is epochal's as everywhere: save, exit 75.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from epochal.errors import ConfigError, EpochalError
from epochal.signals import PREEMPTED_EXIT_CODE

EXTRA_HINT = "pip install 'epochal[slurm]'"
TIME_LIMIT_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM (and its local executor) to send before the limit
TIME_PATTERN = re.compile(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)|(\d+)")


@dataclass
class ClusterLaunch:
    """How the job array is asked for (``epochal sweep --launcher slurm``)."""

    partition: str | None = None  # SLURM partition; None: the cluster's default
    gpus_per_worker: int = 0  # GPUs each array task gets (one worker a task)
    time_minutes: float = 240.0  # each task's time limit; a task that reaches it is requeued and continues
    signal_delay_s: int = 120  # how long before the limit the signal comes: time to write a checkpoint
    cluster: str = "slurm"  # "local": submitit's local executor runs the same array here (how the tests run it)


def parse_time(text: str) -> float:
    """SLURM's ``--time`` forms MINUTES, HH:MM:SS and D-HH:MM:SS, in minutes."""
    match = TIME_PATTERN.fullmatch(text.strip())
    if not match or (match.group(5) is None and (int(match.group(3)) > 59 or int(match.group(4)) > 59)):
        raise ConfigError(f"--time {text!r}: not a time limit; allowed: MINUTES, HH:MM:SS or D-HH:MM:SS (e.g. 4:00:00)")
    days, hours, minutes, seconds, only_minutes = match.groups()
    total = int(only_minutes) if only_minutes else (int(days or 0) * 24 + int(hours)) * 60 + int(minutes) + int(seconds) / 60
    if total <= 0:
        raise ConfigError(f"--time {text!r}: must be longer than zero; allowed: MINUTES, HH:MM:SS or D-HH:MM:SS")
    return total


def require_submitit():
    """submitit, or one line naming the extra that brings it."""
    try:
        import submitit
    except ImportError:
        raise EpochalError(f"--launcher slurm needs submitit, which is not installed; {EXTRA_HINT}") from None
    return submitit


class SweepJob:
    """One array task: a sweep worker; requeued with its own arguments when the time limit comes.

    submitit's checkpointing protocol (that of ``submitit.helpers.Checkpointable``, written out here so
    that this module imports without submitit): ``checkpoint`` resubmits the same call, and the requeued
    worker finds its trial's retry waiting."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir

    def __call__(self, index: int) -> int:
        from epochal.sweep.worker import main

        requeue = signal.getsignal(TIME_LIMIT_SIGNAL)  # submitit's: checkpoint, requeue, exit
        time_up: list[int] = []

        def preempt(signum, frame) -> None:
            time_up.append(signum)
            os.kill(os.getpid(), signal.SIGUSR1)  # epochal's preemption signal: the current handler saves and stops

        signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # until the worker installs its own
        signal.signal(TIME_LIMIT_SIGNAL, preempt)
        code = main([self.sweep_dir]) if not time_up else PREEMPTED_EXIT_CODE
        signal.signal(TIME_LIMIT_SIGNAL, requeue)
        if time_up and callable(requeue):
            requeue(TIME_LIMIT_SIGNAL, None)  # the run has saved: now submitit requeues the job and exits
        return code

    def checkpoint(self, index: int):
        """Called by submitit's handler, after the run has saved: the same worker again."""
        return require_submitit().helpers.DelayedSubmission(self, index)


def make_executor(launch: ClusterLaunch, folder: Path, workers: int, name: str):
    submitit = require_submitit()
    timeout = max(1, round(launch.time_minutes)) if launch.cluster == "slurm" else launch.time_minutes
    # A short limit still leaves the job half its time before the signal.
    delay = min(launch.signal_delay_s, int(launch.time_minutes * 30))
    if launch.cluster == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout, signal_delay_s=delay)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster=launch.cluster)
    extra = {"slurm_partition": launch.partition} if launch.partition else {}
    executor.update_parameters(name=name, timeout_min=timeout, nodes=1, tasks_per_node=1,
                               gpus_per_node=launch.gpus_per_worker, slurm_signal_delay_s=delay,
                               slurm_array_parallelism=workers, **extra)
    return executor


def run_job_array(sweep_dir: Path, workers: int, storage_url: str | None, launch: ClusterLaunch,
                  echo: Callable[[str], None] = print) -> int:
    """Submit ``workers`` array tasks and wait for them; 75 if any was preempted and not requeued, 1 if one failed."""
    from epochal.sweep.worker import STORAGE_ENV

    if storage_url:
        os.environ[STORAGE_ENV] = storage_url  # exported to the jobs, never written into their pickles
    folder = sweep_dir / "jobs"
    executor = make_executor(launch, folder, workers, sweep_dir.name)
    jobs = executor.map_array(SweepJob(str(sweep_dir)), range(workers))
    echo(f"submitted {len(jobs)} {launch.cluster} job(s) {jobs[0].job_id.split('_')[0]}...; job logs in {folder}; "
         "the jobs keep running if this command ends")
    codes = []
    for job in jobs:
        try:
            codes.append(job.result())
        except Exception as err:  # noqa: BLE001 - submitit reports a failed job with its traceback; one line here
            echo(f"job {job.job_id} failed: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}")
            codes.append(1)
    if PREEMPTED_EXIT_CODE in codes:
        return PREEMPTED_EXIT_CODE
    return 1 if any(codes) else 0
