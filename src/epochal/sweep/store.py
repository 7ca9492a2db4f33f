"""Optuna's side of a sweep: the storage, the study, and trials whose worker died.

The embedded default is Optuna's journal file in the sweep folder
(``benchmarks/sweep_storage.py``: with 4 workers on one machine it lost no trial and
cost about a third of SQLite's time per trial). ``--storage URL`` takes any SQLAlchemy
URL (``postgresql://...``): that is how workers on several machines share one sweep,
and those storages also get Optuna's heartbeat, so a trial whose machine died is
failed and retried by the other workers after ``GRACE_SECONDS``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from epochal.errors import EpochalError

JOURNAL = "optuna.journal"
HEARTBEAT_SECONDS = 10  # RDB storages: how often a running trial records that its worker lives
GRACE_SECONDS = 60  # ... and how long without a record before another worker fails and retries it
SQLITE_TIMEOUT = 60  # seconds a SQLite writer waits for the file lock instead of failing at once
EXTRA_HINT = "pip install 'epochal[sweep]'"


def require_optuna():
    """optuna, or one line naming the extra that brings it."""
    try:
        import optuna
    except ImportError:
        raise EpochalError(f"sweeps need Optuna, which is not installed; {EXTRA_HINT}") from None
    if optuna.logging.get_verbosity() != optuna.logging.ERROR:  # setting it clears every logger's cache: only once
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own lines
    import warnings

    warnings.filterwarnings("ignore", module="optuna")  # experimental-feature notices, re-reported steps
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def masked(url: str | None) -> str:
    """A storage URL fit for sweep.json and messages: the password is hidden."""
    if url is None:
        return JOURNAL
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by open_storage
        return url


def retry_callback():
    optuna = require_optuna()
    # Unlimited retries: a retry resumes from the run's checkpoints, so a preempted trial always progresses.
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)


def open_storage(url: str | None, sweep_dir: Path):
    """The study's storage: the journal file in the sweep folder, or the database at ``url``."""
    optuna = require_optuna()
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    engine: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else {}
    if not url.startswith("sqlite"):
        engine["pool_pre_ping"] = True  # a long trial outlives idle database connections
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS,
                                          heartbeat_stale_trial_callback=retry_callback())
    except ImportError as err:
        missing = getattr(err.__cause__, "name", None) or getattr(err, "name", None) or "for this URL"
        raise EpochalError(f"--storage {masked(url)}: the database driver {missing} is not installed; "
                           f"{EXTRA_HINT}") from None
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many kinds; one line names the URL and the cause
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EpochalError(f"--storage {masked(url)}: cannot open ({cause}); allowed: an SQLAlchemy URL such as "
                           "postgresql://user@host/db or sqlite:///path.db") from None


# --------------------------------------------------------------- worker identity
def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (Linux): state first, start time at index 19."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """When a process started: with the pid, tells a live worker from a reused pid."""
    stat = _proc_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def worker_dead(worker: dict[str, Any]) -> bool:
    """Only a worker of this machine can be checked; one elsewhere is the heartbeat's business."""
    if worker.get("host") != socket.gethostname():
        return False
    pid = int(worker.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat and stat[0] in ("Z", "X"):
        return True  # killed, not yet reaped (its parent died with it)
    started = worker.get("started")
    return started is not None and _start_time(pid) not in (None, started)


# --------------------------------------------------------------- stale trials
def retried_numbers(trials) -> set[int]:
    """Trials that a later trial retries (their point lives on in the retry)."""
    found: set[int] = set()
    for t in trials:
        found.update(t.system_attrs.get("retry_history", []))
    return found


def reclaim(study, storage, orphans: bool = False) -> list[int]:
    """Fail and retry trials whose worker is gone: dead workers of this machine now, others by heartbeat.

    ``orphans`` (the coordinator, before any worker starts): also retry failed trials
    that recorded no failure reason, i.e. were interrupted by an exception outside a run.
    Returns the numbers of the trials retried here.
    """
    optuna = require_optuna()
    TrialState = optuna.trial.TrialState
    optuna.storages.fail_stale_trials(study)
    retry = retry_callback()
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    done: list[int] = []
    by_number = {t.number: t for t in trials}
    for t in trials:
        if t.state == TrialState.RUNNING and worker_dead(t.user_attrs.get("worker", {})) and (
                orphans or not _just_popped(t, by_number)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first and retries it
        elif not (orphans and t.state == TrialState.FAIL and t.number not in retried
                  and not {"failure_reason", "surplus"} & set(t.user_attrs)):
            continue
        retry(study, storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, t.number)))
        done.append(t.number)
    return done


def _just_popped(trial, by_number: dict) -> bool:
    """A retry taken by a worker that has not yet written its own identity: it still shows the dead one's."""
    history = trial.system_attrs.get("retry_history", [])
    previous = by_number.get(history[-1]) if history else None
    return previous is not None and previous.user_attrs.get("worker") == trial.user_attrs.get("worker")
