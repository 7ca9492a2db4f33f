"""A sweep's bookkeeping per trial, per storage; and which file-based storage holds up with several workers.

Default: the milliseconds a trial costs beyond its training, through the real worker of
`epochal sweep` (one worker, in this process) with a trivial objective: the toy task, one
training step per trial, one seed. A trial's wall time is the time between the starts of
consecutive trials in Optuna's records ((last start - first start) / (TRIALS - 1)), so it
holds everything the worker does per trial (ask, build the task, train, evaluate and test,
write the run folder: config, env.json, history, checkpoint, result.json; tell, sweep.json)
and leaves out the sweep's start-up. Bookkeeping = that minus the training step itself, timed
in this process as a hand-written loop of the same model and batch. For each storage: the
journal file (the default), SQLite, and PostgreSQL when --postgres URL is given.

    python benchmarks/sweep_storage.py [--trials 200] [--repeats 3] [--postgres postgresql://...]

--contention: starts WORKERS processes that share one study in a temp folder and each run TRIALS
trials the way a sweep worker does (ask, report a few intermediate values, set user
attributes, tell), for SQLite (RDBStorage, with and without heartbeats) and for the
journal file (JournalFileBackend with its symlink lock and with its open lock). It
reports errors, trials lost or duplicated, and the time per trial.

    python benchmarks/sweep_storage.py --contention [--workers 4] [--trials 40] [--work-ms 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import secrets
import statistics
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


# ------------------------------------------------------------------ bookkeeping per trial
BATCH = 8
SPEC = f"""
task = "toy"
method = "random"
trials = {{trials}}
metric = "eval_mse"
seeds = [0]
[space]
"optim.lr" = {{{{ low = 1e-4, high = 1e-1, log = true }}}}
[set]
"train.max_epochs" = 1
"task.n_train" = {BATCH}
"task.n_eval" = {BATCH}
"train.batch_size" = {BATCH}
"""


def step_ms(repeats: int = 200) -> float:
    """One training step of the toy model at the sweep's batch, hand-written (the training a trial does)."""
    import torch

    from epochal.tasks.toy import ToyConfig

    cfg = ToyConfig()
    model = torch.nn.Sequential(torch.nn.Linear(cfg.dim, cfg.hidden), torch.nn.GELU(),
                                torch.nn.Linear(cfg.hidden, cfg.dim))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, cfg.dim), torch.randn(BATCH, cfg.dim)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.detach().item()  # wait for the step, as a sweep trial does
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def trial_ms(storage: str | None, trials: int) -> float:
    """Wall milliseconds per trial of one sweep through the real worker, start-up left out."""
    from epochal.sweep import start_sweep
    from epochal.sweep.worker import open_worker

    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.toml"
        spec.write_text(SPEC.format(trials=trials))
        url = f"sqlite:///{folder}/optuna.db" if storage == "sqlite" else storage
        sweep_id = f"bench-{secrets.token_hex(4)}"  # a study of its own in a shared database
        code = start_sweep(spec, folder, sweep_id, storage=url, echo=lambda message: None)
        assert code == 0, f"the sweep ended with {code}"
        study = open_worker(Path(folder) / sweep_id, url, echo=lambda message: None).study
        starts = sorted(t.datetime_start for t in study.get_trials(deepcopy=False))
        runs = list((Path(folder) / sweep_id / "runs").iterdir())
        assert len(runs) == trials and all(json.loads((r / "result.json").read_text())["status"] == "completed"
                                           for r in runs)
    return 1000 * (starts[-1] - starts[0]).total_seconds() / (trials - 1)


def bookkeeping(args) -> None:
    storages = {"journal (default)": None, "sqlite": "sqlite"}
    if args.postgres:
        storages["postgresql"] = args.postgres
    print(f"{args.trials} one-step toy trials a sweep, {args.repeats} repeats; ms per trial beyond the training step")
    if not args.postgres:
        print("postgresql: skipped (no --postgres URL)")
    training = step_ms()
    print(f"training step (hand-written loop): {training:.2f} ms")
    figures: dict[str, list[float]] = {name: [] for name in storages}
    for _ in range(args.repeats):  # storages interleaved repeat by repeat: a busy machine hits them alike
        for name, url in storages.items():
            figures[name].append(trial_ms(url, args.trials) - training)
    print(f"{'storage':18s} {'min':>7s} {'median':>7s} {'max':>7s}")
    for name, values in figures.items():
        print(f"{name:18s} {min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}")


def contention(args) -> None:
    print(f"{args.workers} workers x {args.trials} trials, {args.work_ms:g} ms of work per trial")
    print(f"{'storage':22s} {'errors':>6s} {'complete':>9s} {'dup':>4s} {'storage ms/trial':>17s}  first error")
    for kind in STORAGES:
        r = measure(kind, args.workers, args.trials, args.work_ms)
        print(f"{r['storage']:22s} {r['errors']:6d} {r['complete']:4d}/{r['expected']:<4d} {r['duplicate_numbers']:4d} "
              f"{r['ms_per_trial']:17.1f}  {r['first_error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="trials a sweep (default 200), or per worker with "
                                                                   "--contention (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="sweeps per storage")
    parser.add_argument("--postgres", metavar="URL", help="also measure a PostgreSQL storage (an empty database)")
    parser.add_argument("--contention", action="store_true", help="compare file storages under several workers")
    parser.add_argument("--workers", type=int, default=4, help="--contention: worker processes")
    parser.add_argument("--work-ms", type=float, default=20.0, help="--contention: simulated work per trial")
    args = parser.parse_args()
    if args.contention:
        args.trials = args.trials or 40
        contention(args)
    else:
        args.trials = args.trials or 200
        bookkeeping(args)


if __name__ == "__main__":
    main()
