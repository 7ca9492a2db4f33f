"""``epochal sweep``: many runs of one recipe over a search space, on Optuna, resumable.

The sweep folder (``<out>/<sweep id>/``) holds:

  spec.toml       the spec as given
  base.toml       the config every trial starts from (task defaults <- recipe <- [set])
  sweep.json      one entry per point: parameters, value (mean over seeds), spread, status, failure reason
  optuna.journal  the study, unless --storage names a database
  runs/           one ordinary run folder per (point, seed): <point key>-seed<seed>
  logs/           what each worker's runs printed
  report.html     and plots/: written by `epochal report SWEEP_DIR` (report.py)

The coordinator here checks the spec, creates or loads the study, retries trials whose
worker died, and runs the workers (worker.py): in this process for one worker, else as
processes that share the study. Workers on other machines join by running the same
command with the same ``--id`` and ``--storage``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from epochal.io import atomic_write_text
from epochal.config import load_toml
from epochal.errors import ConfigError, EpochalError
from epochal.signals import PREEMPTED_EXIT_CODE
from epochal.sweep.launcher import ClusterLaunch, run_job_array
from epochal.sweep.spec import SweepSpec, base_config, load_spec, load_task, parse_spec
from epochal.sweep.store import JOURNAL, masked, open_storage, reclaim, require_optuna
from epochal.sweep.summary import read_summary, write_summary
from epochal.sweep.worker import STORAGE_ENV, open_worker, pending

__all__ = ["resume_sweep", "start_sweep", "ClusterLaunch", "SweepSpec", "load_spec"]

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def default_id(spec_path: Path) -> str:
    """<spec name>-<time>-<4 hex>: two sweeps started in the same second still get different folders."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", spec_path.stem) or "sweep"
    return f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_id(sweep_id: str) -> str:
    if not ID_PATTERN.fullmatch(sweep_id) or sweep_id in (".", ".."):
        raise ConfigError(f"--id {sweep_id!r}: not a folder name; allowed: letters, digits, '.', '_' and '-'")
    return sweep_id


def check_workers(workers: int) -> int:
    if workers < 1:
        raise ConfigError(f"--workers: {workers} must be positive; allowed: >= 1")
    return workers


def start_sweep(spec_path: str | Path, out_dir: str | Path = "results", sweep_id: str | None = None,
                workers: int = 1, storage: str | None = None, echo: Callable[[str], None] = print,
                workers_per_gpu: int | None = None, cluster: ClusterLaunch | None = None) -> int:
    """Start a sweep, or join one of the same id and spec (another machine, the same --storage).
    ``cluster``: the workers go to a cluster as one job array (launcher.py) instead of this machine."""
    workers = workers_for_gpus(workers_per_gpu) if workers_per_gpu is not None else check_workers(workers)
    require_optuna()
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    task = load_task(spec.task)
    base = base_config(spec, task, spec_path.parent).to_dict()
    sweep_dir = Path(out_dir) / check_id(sweep_id or default_id(spec_path))
    if storage is not None:
        open_storage(storage, sweep_dir)  # a database that cannot be reached is refused before any folder exists
    text = spec_path.read_text()
    if (sweep_dir / "spec.toml").exists():
        if (sweep_dir / "spec.toml").read_text() != text:
            raise EpochalError(f"{sweep_dir}: a sweep with another spec is there; use another --id, or "
                               f"`epochal sweep --resume {sweep_dir}` to continue it")
        echo(f"joining sweep {sweep_dir}")
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / "spec.toml", text)
        import tomli_w

        atomic_write_text(sweep_dir / "base.toml", tomli_w.dumps(_drop_none(base)))
        created = datetime.datetime.now().isoformat(timespec="seconds")
        atomic_write_text(sweep_dir / "sweep.json", json.dumps(
            {"sweep": sweep_dir.name, "state": "starting", "study": sweep_dir.name, "storage": masked(storage),
             "created": created}, indent=1) + "\n")
    return _drive(sweep_dir, spec, workers, storage, echo, workers_per_gpu, cluster)


def resume_sweep(sweep_dir: str | Path, workers: int = 1, storage: str | None = None,
                 echo: Callable[[str], None] = print, workers_per_gpu: int | None = None,
                 cluster: ClusterLaunch | None = None) -> int:
    """Continue a sweep: finished points are kept, interrupted ones continue from their runs' checkpoints."""
    workers = workers_for_gpus(workers_per_gpu) if workers_per_gpu is not None else check_workers(workers)
    require_optuna()
    sweep_dir = Path(sweep_dir)
    summary = read_summary(sweep_dir)
    if not summary or not (sweep_dir / "spec.toml").exists():
        raise EpochalError(f"{sweep_dir}: not a sweep folder (no sweep.json and spec.toml); allowed: a folder "
                           "made by `epochal sweep`")
    stored = summary.get("storage") or JOURNAL
    if storage is None and stored != JOURNAL:
        if "***" in stored:
            raise EpochalError(f"{sweep_dir}: its storage {stored} has a password, which is not stored; "
                               "pass --storage URL again")
        storage = stored
    spec = parse_spec(load_toml(sweep_dir / "spec.toml"))
    load_task(spec.task)
    return _drive(sweep_dir, spec, workers, storage, echo, workers_per_gpu, cluster)


def _drive(sweep_dir: Path, spec: SweepSpec, workers: int, storage_url: str | None,
           echo: Callable[[str], None], per_gpu: int | None = None, cluster: ClusterLaunch | None = None) -> int:
    optuna = require_optuna()
    storage = open_storage(storage_url, sweep_dir)
    study = optuna.create_study(study_name=read_summary(sweep_dir).get("study", sweep_dir.name), storage=storage,
                                direction=spec.direction, load_if_exists=True)
    _check_same_sweep(study, sweep_dir)
    retried = reclaim(study, storage, orphans=True)
    if retried:
        echo(f"retrying interrupted trials {', '.join(map(str, retried))} from their checkpoints")
    echo(f"sweep {sweep_dir}: {spec.method}, {spec.points} points x {len(spec.seeds)} seeds, {workers} worker(s), "
         f"storage {masked(storage_url)}")
    write_summary(sweep_dir, study, spec)
    if cluster is not None:
        code = run_job_array(sweep_dir, workers, storage_url, cluster, echo)
    elif workers == 1 and per_gpu is None:
        code = open_worker(sweep_dir, storage_url, echo).work()
    else:
        code = _run_processes(sweep_dir, workers, storage_url, per_gpu)
    left = pending(study, spec)  # trials still to ask for, or retries waiting
    running = sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))
    if not left and not running:
        state = "finished"
    else:
        # Trials running when this machine's workers ended normally are other machines' (or workers') business.
        state = "running" if not left and code == 0 else "interrupted"
    summary = write_summary(sweep_dir, study, spec, state)
    _print_summary(summary, sweep_dir, echo)
    if state == "running":
        echo(f"{running} trial(s) still running on other workers; their results reach {sweep_dir / 'sweep.json'}")
    if state == "interrupted":
        echo(f"not finished; continue with: epochal sweep --resume {sweep_dir}")
        return code or PREEMPTED_EXIT_CODE
    if code:
        echo(f"a worker exited with an error (see {sweep_dir / 'logs'}); the others finished the sweep")
    return 0


def _fingerprint(sweep_dir: Path) -> str:
    """What makes two sweeps the same: the spec's settings and the base config, not their formatting."""
    spec = load_toml(sweep_dir / "spec.toml")
    base = load_toml(sweep_dir / "base.toml")
    text = json.dumps({"spec": spec, "base": base}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_same_sweep(study, sweep_dir: Path) -> None:
    mine = _fingerprint(sweep_dir)
    theirs = study.user_attrs.get("epochal_sweep")
    if theirs is None:
        study.set_user_attr("epochal_sweep", mine)
    elif theirs != mine:
        raise EpochalError(f"study {study.study_name!r} in this storage belongs to another sweep (spec or recipe "
                           "differs); use another --id")


def workers_for_gpus(per_gpu: int) -> int:
    """--workers-per-gpu K: K workers on each visible GPU (small models leave a GPU mostly idle: measured
    on an H200, 4 flow-seed trainings at once ran 4.2x the steps of one)."""
    import torch

    if per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu: {per_gpu} must be positive; allowed: >= 1")
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise ConfigError("--workers-per-gpu: no CUDA GPU is visible here; allowed here: --workers N")
    return per_gpu * gpus


def _worker_env(index: int, workers: int, storage_url: str | None, per_gpu: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if storage_url:
        env[STORAGE_ENV] = storage_url
    # Workers share the cores: without this each would start a thread per core.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    import torch

    gpus = torch.cuda.device_count()
    if per_gpu or gpus > 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        # K workers a GPU with --workers-per-gpu K, else one GPU per worker, in turn
        env["CUDA_VISIBLE_DEVICES"] = ids[index // per_gpu if per_gpu else index % gpus]
    return env


def _run_processes(sweep_dir: Path, workers: int, storage_url: str | None, per_gpu: int | None = None) -> int:
    """Start the workers and wait; a signal here is passed on as SIGTERM (each saves its run and stops)."""
    procs = [subprocess.Popen([sys.executable, "-m", "epochal.sweep", str(sweep_dir)],
                              env=_worker_env(i, workers, storage_url, per_gpu)) for i in range(workers)]
    received: list[int] = []

    def forward(signum, frame) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    previous = {sig: signal.signal(sig, forward) for sig in watched}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received or PREEMPTED_EXIT_CODE in codes:
        return PREEMPTED_EXIT_CODE
    bad = [c for c in codes if c != 0]
    return 1 if bad else 0


def _print_summary(summary: dict, sweep_dir: Path, echo: Callable[[str], None]) -> None:
    from epochal.runs import format_table

    rows = []
    for entry in summary["points"]:
        spread = f" ± {entry['std']:.2g}" if entry.get("std") and len(entry["values"]) > 1 else ""
        value = f"{entry['value']:.4g}{spread}" if entry["value"] is not None else ""
        rows.append({"point": entry["point"], **entry["params"], summary["metric"]: value,
                     "status": entry["status"], "reason": entry.get("failure_reason") or ""})
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items() if n)
    echo(f"{sweep_dir}: {counts or 'no points yet'}")
    if rows:
        echo(format_table(rows))
    echo(f"summary: {sweep_dir / 'sweep.json'}")


def _drop_none(data):
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data
