"""Which of Optuna's file-based storages holds up with several sweep workers on one machine.

Starts WORKERS processes that share one study in a temp folder and each run TRIALS
trials the way a sweep worker does (ask, report a few intermediate values, set user
attributes, tell), for SQLite (RDBStorage, with and without heartbeats) and for the
journal file (JournalFileBackend with its symlink lock and with its open lock). It
reports errors, trials lost or duplicated, and the time per trial.

    python benchmarks/sweep_storage.py [--workers 4] [--trials 40] [--work-ms 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

STORAGES = ("sqlite-default-timeout", "sqlite", "sqlite+heartbeat", "journal-symlink", "journal-open")


def make_storage(kind: str, folder: Path):
    import optuna

    if kind.startswith("sqlite"):
        heartbeat = {"heartbeat_interval": 1, "grace_period": 10} if kind.endswith("heartbeat") else {}
        # What epochal passes (a writer waits up to 60 s for the lock), or SQLite's own 5 s.
        engine = {} if kind == "sqlite-default-timeout" else {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}", engine_kwargs=engine, **heartbeat)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalFileSymlinkLock, JournalStorage

    path = str(folder / "optuna.journal")
    lock = JournalFileSymlinkLock(path) if kind == "journal-symlink" else JournalFileOpenLock(path)
    return JournalStorage(JournalFileBackend(path, lock_obj=lock))


def worker(kind: str, folder: str, trials: int, work_ms: float, errors) -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name="bench", storage=make_storage(kind, Path(folder)),
                              sampler=optuna.samplers.RandomSampler())

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        trial.set_user_attr("worker", multiprocessing.current_process().name)
        for step in range(3):
            time.sleep(work_ms / 3000)
            trial.report(x * step, step)
        return x * x

    try:
        study.optimize(objective, n_trials=trials)
    except Exception:  # noqa: BLE001 - the benchmark counts whatever a storage throws
        errors.put(traceback.format_exc(limit=1).strip().splitlines()[-1])


def measure(kind: str, workers: int, trials: int, work_ms: float) -> dict:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with tempfile.TemporaryDirectory() as folder:
        optuna.create_study(study_name="bench", storage=make_storage(kind, Path(folder)))
        errors = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=worker, args=(kind, folder, trials, work_ms, errors))
                 for _ in range(workers)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - start
        found = []
        while not errors.empty():
            found.append(errors.get())
        done = optuna.load_study(study_name="bench", storage=make_storage(kind, Path(folder))).get_trials()
        numbers = Counter(t.number for t in done)
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    return {"storage": kind, "errors": len(found), "first_error": found[0] if found else "",
            "complete": complete, "expected": workers * trials,
            "duplicate_numbers": sum(c > 1 for c in numbers.values()),
            "ms_per_trial": 1000 * seconds * workers / max(1, complete) - work_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40, help="trials per worker")
    parser.add_argument("--work-ms", type=float, default=20.0, help="simulated work per trial")
    args = parser.parse_args()
    print(f"{args.workers} workers x {args.trials} trials, {args.work_ms:g} ms of work per trial")
    print(f"{'storage':22s} {'errors':>6s} {'complete':>9s} {'dup':>4s} {'storage ms/trial':>17s}  first error")
    for kind in STORAGES:
        r = measure(kind, args.workers, args.trials, args.work_ms)
        print(f"{r['storage']:22s} {r['errors']:6d} {r['complete']:4d}/{r['expected']:<4d} {r['duplicate_numbers']:4d} "
              f"{r['ms_per_trial']:17.1f}  {r['first_error']}")


if __name__ == "__main__":
    main()
