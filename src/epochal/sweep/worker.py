"""A sweep worker: takes trials from the study until the sweep has none left, and trains their runs.

A trial is one point; it trains one run per seed, each an ordinary run folder
``runs/<point key>-seed<seed>`` that is the source of truth for that (point, seed):

- a run folder whose result.json is final (completed, gate_failed, failed, pruned) is never trained
  again: a retried or duplicate trial reads its result;
- a run folder locked by a live process is being trained: wait for it, then read it;
- any other run folder is continued from its newest checkpoint (``resume="auto"``),
  so a trial retried after a kill continues exactly where its runs stopped.

Started by the coordinator (``python -m epochal.sweep SWEEP_DIR``) or run inside it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from epochal.callbacks.base import Callback
from epochal.config import load_toml
from epochal.decisions import Stop
from epochal.errors import ConfigError, EpochalError
from epochal.io import atomic_write_text
from epochal.run_folder import RunFolder
from epochal.signals import PREEMPTED_EXIT_CODE
from epochal.status import GATE_FAILED, status_of
from epochal.sweep.spec import SweepSpec, grid_space, load_task, parse_spec, point_key, run_id, suggest, trial_config
from epochal.sweep.store import open_storage, reclaim, require_optuna, retried_numbers, retry_callback, this_worker

FINAL = ("completed", "gate_failed", "failed", "pruned")
WAIT_SECONDS = 0.5  # how often a duplicate trial looks at a run folder another worker is training
STORAGE_ENV = "EPOCHAL_SWEEP_STORAGE"  # the storage URL reaches workers here, not on the process list
SUMMARY_EVERY_SECONDS = 2.0  # sweep.json is rewritten whole (every point): after a trial at most this often
SIGNAL_ENV = "EPOCHAL_SWEEP_SIGNAL_AT"  # test hook "RUN:STEP[:SIGNAL]": signal the whole sweep there (KILL)


class TrialEnded(Exception):
    """A trial that ends other than with a value; Optuna records it as failed."""


class TrialFailed(TrialEnded):
    pass


class TrialInterrupted(TrialEnded):
    """A signal stopped the worker: the trial is retried by the next worker or --resume."""


class TrialSurplus(TrialEnded):
    """Two workers asked for the last trial at once: the later one is not run."""


@dataclass
class Outcome:
    status: str  # completed, gate_failed, failed, pruned, interrupted
    value: float | None = None  # the metric that judges the run (last or best evaluation)
    reason: str = ""  # why it failed or was pruned
    gate_passed: bool | None = None


# ------------------------------------------------------------------ inside a run
class SweepTrial(Callback):
    """In each run of a trial: notes the trial in the run folder and, on the first seed, feeds the pruner."""

    def __init__(self, trial, info: dict, metric: str | None, pruner: str):
        self.trial, self.info, self.metric, self.pruner = trial, info, metric, pruner

    def on_fit_start(self, run) -> None:
        path = run.dir / "trial.json"
        record = json.loads(path.read_text()) if path.exists() else {**self.info, "trials": [], "starts": []}
        if self.trial.number not in record["trials"]:
            record["trials"].append(self.trial.number)
        record["starts"].append({"trial": self.trial.number, "from_step": run.state.step,
                                 "at": datetime.datetime.now().isoformat(timespec="seconds")})
        run.folder.write_json("trial.json", record)
        config = run.dir / "config.toml"
        text = config.read_text()
        if not text.startswith("# sweep"):
            params = ", ".join(f"{k} = {v!r}" for k, v in self.info["params"].items())
            atomic_write_text(config, f"# sweep {self.info['sweep']} trial {self.trial.number}, point "
                                      f"{self.info['point']}: {params}; seed {self.info['seed']}\n{text}")

    def on_eval_end(self, run, metrics: dict[str, float]):
        if self.metric is None or not math.isfinite(metrics.get(self.metric, math.nan)):
            return None
        value, epoch = metrics[self.metric], run.state.epoch
        self.trial.report(value, epoch - 1)  # Optuna's steps start at zero
        if self.trial.should_prune():
            return Stop(f"pruned by the {self.pruner} pruner after epoch {epoch} ({self.metric} {value:.4g})", "pruned")
        return None


class SignalGroupAt(Callback):
    """Test hook: signal the coordinator and every worker (one process group) mid-run: SIGKILL as a
    crash would, SIGTERM as a scheduler would."""

    def __init__(self, step: int, signum: int = signal.SIGKILL):
        self.step, self.signum = step, signum

    def on_step_end(self, run) -> None:
        if run.state.step == self.step:
            import os

            os.killpg(os.getpgid(0), self.signum)


# ------------------------------------------------------------------ the worker
@dataclass
class Worker:
    sweep_dir: Path
    spec: SweepSpec
    study: Any
    storage: Any
    task: Any
    base: dict
    echo: Callable[[str], None] = print
    signal_received: int | None = None
    runs_started: int = 0
    signal_at: tuple[int, int, int] | None = None  # test hook: (run, step, signal)
    interrupted: set[int] = field(default_factory=set)  # trials a signal stopped here: retried after they end
    log_file: Any = field(default=None, repr=False)
    summary_due: float = 0.0  # monotonic time after which a finished trial rewrites sweep.json

    @property
    def runs_dir(self) -> Path:
        return self.sweep_dir / "runs"

    def log(self, message: str) -> None:
        if self.log_file is not None:
            self.log_file.write(message + "\n")
            self.log_file.flush()

    # -------------------------------------------------------------- the loop
    def work(self) -> int:
        """Run trials until none are left or a signal arrives; 75 if a signal stopped it."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        try:
            reclaim(self.study, self.storage)
            while self.signal_received is None and pending(self.study, self.spec):
                self.study.optimize(self.objective, catch=(TrialEnded,), callbacks=[self.after_trial],
                                    gc_after_trial=False)
            self.write_summary()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return PREEMPTED_EXIT_CODE if self.signal_received is not None else 0

    def _on_signal(self, signum, frame) -> None:
        # Between runs: finish nothing more. Inside a run, epochal's own handler saves and stops it.
        self.signal_received = signum

    def after_trial(self, study, trial) -> None:
        # Not a user attribute: a retry copies those, and would be retried again.
        if trial.number in self.interrupted:
            retry_callback()(study, trial)
        reclaim(study, self.storage)
        if time.monotonic() >= self.summary_due:
            self.write_summary()
        if self.signal_received is not None or not pending(study, self.spec):
            study.stop()

    def write_summary(self) -> None:
        """sweep.json from the study. Not after every trial: on 200 small trials, rewriting it each time was
        about a fifth of their bookkeeping (benchmarks/sweep_storage.py)."""
        from epochal.sweep.summary import write_summary

        write_summary(self.sweep_dir, self.study, self.spec)
        self.summary_due = time.monotonic() + SUMMARY_EVERY_SECONDS

    # -------------------------------------------------------------- one trial
    def objective(self, trial) -> float:
        trial.set_user_attr("worker", this_worker())
        if self.spec.method != "grid":
            index = position(self.study, trial.number)
            self._check_surplus(trial, index)
            self.study.sampler = make_sampler(self.spec, index)
        params = suggest(trial, self.spec.space)
        key = point_key(params)
        trial.set_user_attr("point", key)
        outcomes: dict[int, Outcome] = {}
        for index, seed in enumerate(self.spec.seeds):
            outcome = self.run_seed(trial, params, key, seed, first=index == 0)
            self.echo(f"trial {trial.number} {_show(params)} seed {seed}: {_describe(outcome, self.spec.metric)}")
            if outcome.status == "interrupted":
                self.interrupted.add(trial.number)
                raise TrialInterrupted(f"interrupted at seed {seed}")
            outcomes[seed] = outcome
            if outcome.status == "pruned":
                break
        return self._conclude(trial, outcomes)

    def _conclude(self, trial, outcomes: dict[int, Outcome]) -> float:
        optuna = require_optuna()
        values = {str(seed): o.value for seed, o in outcomes.items() if o.value is not None}
        trial.set_user_attr("values", values)
        trial.set_user_attr("statuses", {str(seed): o.status for seed, o in outcomes.items()})
        gates = [o.gate_passed for o in outcomes.values() if o.gate_passed is not None]
        if gates:
            trial.set_user_attr("gate_passed", all(gates))
        pruned = [o for o in outcomes.values() if o.status == "pruned"]
        if pruned:
            trial.set_user_attr("pruned_reason", pruned[0].reason)
            raise optuna.TrialPruned(pruned[0].reason)
        failed = {seed: o for seed, o in outcomes.items() if o.status in ("failed", GATE_FAILED)}
        if failed:
            reason = "; ".join(f"seed {seed}: {o.reason}" for seed, o in failed.items())
            trial.set_user_attr("failure_reason", reason)
            # The point's status: gate_failed when every seed that failed trained to the end without passing.
            trial.set_user_attr(GATE_FAILED, all(o.status == GATE_FAILED for o in failed.values()))
            raise TrialFailed(reason)
        numbers = list(values.values())
        trial.set_user_attr("std", statistics.stdev(numbers) if len(numbers) > 1 else 0.0)
        return statistics.fmean(numbers)

    def _check_surplus(self, trial, index: int) -> None:
        if index >= self.spec.trials:
            trial.set_user_attr("surplus", True)
            self.study.stop()
            raise TrialSurplus(f"trial {trial.number} is beyond the {self.spec.trials} asked for")

    # -------------------------------------------------------------- one run
    def run_seed(self, trial, params: dict, key: str, seed: int, first: bool) -> Outcome:
        """The outcome of (point, seed): read if final, else trained or continued here, or waited for."""
        from epochal.api import run as train

        folder = self.runs_dir / run_id(key, seed)
        while True:
            if self.signal_received is not None:
                return Outcome("interrupted")
            final = read_final(folder)
            if final is not None:
                return outcome_of(final, self.spec)
            try:
                config = trial_config(self.task, self.base, params, seed)
            except ConfigError as err:
                return Outcome("failed", reason=str(err))
            info = {"sweep": self.sweep_dir.name, "point": key, "params": params, "seed": seed}
            report = self.spec.metric if first and self.spec.pruner.kind != "none" else None
            callbacks: list[Callback] = [SweepTrial(trial, info, report, self.spec.pruner.kind)]
            self.runs_started += 1
            if self.signal_at and self.signal_at[0] == self.runs_started:
                callbacks.append(SignalGroupAt(*self.signal_at[1:]))
            try:
                result = train(self.task, config, out_dir=self.runs_dir, experiment_id=folder.name, resume="auto",
                               callbacks=callbacks, log=self.log)
            except EpochalError as err:
                if in_use(folder):
                    time.sleep(WAIT_SECONDS)
                    continue
                return Outcome("failed", reason=str(err))
            except Exception as err:  # noqa: BLE001 - a crashing task fails its trial; the sweep goes on
                self.log(f"{folder.name}: {type(err).__name__}: {err}")
                return Outcome("failed", reason=f"{type(err).__name__}: {err}")
            if result.status == "preempted":
                # The run's own handler took the signal: the worker stops too.
                self.signal_received = self.signal_received or signal.SIGTERM
                return Outcome("interrupted")
            return outcome_of(result.result, self.spec)


# ------------------------------------------------------------------ helpers
def _describe(outcome: Outcome, metric: str) -> str:
    text = outcome.reason if outcome.reason.startswith(outcome.status) else outcome.status
    if outcome.value is not None:
        text += f" {metric} {outcome.value:.4g}"
    if outcome.reason and not outcome.reason.startswith(outcome.status):
        text += f" ({outcome.reason})"
    return text


def _show(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def read_final(folder: Path) -> dict | None:
    """result.json of a run that has ended for good, else None."""
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if status_of(result) in FINAL else None


def in_use(folder: Path) -> bool:
    """Whether a live process holds the run folder's lock: try to take it ourselves and give it back."""
    if not folder.is_dir():
        return False
    probe = RunFolder(folder)
    try:
        probe.acquire()
    except EpochalError:
        return True
    except OSError:
        return False
    probe.release()
    return False


def metric_value(result: dict, spec: SweepSpec) -> float | None:
    """The run's value: its metric at the last evaluation, or the best over its evaluations."""
    if spec.value == "best":
        curve = [v for v in result.get("curves", {}).get(spec.metric, []) if v is not None and math.isfinite(v)]
        if curve:
            return min(curve) if spec.direction == "minimize" else max(curve)
    value = result.get("metrics", {}).get(spec.metric)
    return float(value) if isinstance(value, (int, float)) else None


def outcome_of(result: dict, spec: SweepSpec) -> Outcome:
    meta = result.get("metadata", {})
    gate = meta.get("gate_passed")
    status = status_of(result)
    if status == "pruned":
        return Outcome("pruned", reason=meta.get("stop_reason", ""))
    if status == "failed":
        return Outcome("failed", reason=meta.get("failure_reason") or meta.get("stop_reason", ""), gate_passed=gate)
    value = metric_value(result, spec)
    if value is None or not math.isfinite(value):
        shown = "not reported" if spec.metric not in result.get("metrics", {}) else "not finite"
        return Outcome("failed", reason=f"{spec.metric} {shown}", gate_passed=gate)
    if status == GATE_FAILED:
        return Outcome(GATE_FAILED, value=value, reason=meta.get("failure_reason", "gate not passed"), gate_passed=False)
    return Outcome("completed", value=value, gate_passed=gate)


def fresh(trials) -> list:
    """Trials that ask for a new point: not retries (a retry finishes its original's point)."""
    return [t for t in trials if "failed_trial" not in t.system_attrs]


def position(study, number: int) -> int:
    """Which of the sweep's points trial ``number`` is (0-based): the same after a kill, whatever the retries."""
    trials = study.get_trials(deepcopy=False)
    origin = next(t for t in trials if t.number == number).system_attrs.get("failed_trial", number)
    return sum(t.number < origin for t in fresh(trials))


def pending(study, spec: SweepSpec) -> bool:
    """Whether a worker should ask for another trial."""
    optuna = require_optuna()
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    if any(t.state == S.WAITING for t in trials):
        return True
    if spec.method != "grid":
        return len(fresh(trials)) < spec.trials
    retried = retried_numbers(trials)
    covered, unknown = set(), 0
    for t in trials:
        live = t.state in (S.RUNNING, S.COMPLETE, S.PRUNED)
        final_fail = t.state == S.FAIL and t.number not in retried and "surplus" not in t.user_attrs
        if not (live or final_fail):
            continue
        if len(t.params) == len(spec.space):
            covered.add(point_key(t.params))
        elif t.state == S.RUNNING:
            unknown += 1  # just asked: its point is not written yet
    return len(covered) + unknown < spec.grid_size


def derived_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:8], 16)


def make_sampler(spec: SweepSpec, index: int = 0):
    """grid: every point; random and tpe: seeded per point, so the k-th point does not depend on the workers."""
    optuna = require_optuna()
    if spec.method == "grid":
        return optuna.samplers.GridSampler(grid_space(spec.space), seed=spec.sampler_seed)
    seed = derived_seed(spec.sampler_seed, index)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(spec: SweepSpec, base: dict):
    optuna = require_optuna()
    p = spec.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base["train"]["max_epochs"])
    return optuna.pruners.NopPruner()


def signal_hook() -> tuple[int, int, int] | None:
    import os

    text = os.environ.get(SIGNAL_ENV)
    if not text:
        return None
    run_number, step, *name = text.split(":")
    return int(run_number), int(step), int(getattr(signal, f"SIG{name[0] if name else 'KILL'}"))


def open_worker(sweep_dir: Path, storage_url: str | None, echo: Callable[[str], None] = print) -> Worker:
    optuna = require_optuna()
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    spec = parse_spec(load_toml(sweep_dir / "spec.toml"))
    base = load_toml(sweep_dir / "base.toml")
    storage = open_storage(storage_url, sweep_dir)
    study = optuna.load_study(study_name=summary["study"], storage=storage, sampler=make_sampler(spec),
                              pruner=make_pruner(spec, base))
    return Worker(sweep_dir, spec, study, storage, load_task(spec.task), base, echo, signal_at=signal_hook())


def main(argv: list[str] | None = None) -> int:
    """``python -m epochal.sweep SWEEP_DIR``: one worker process of a sweep."""
    import os
    import socket

    sweep_dir = Path((argv or sys.argv[1:])[0])
    try:
        worker = open_worker(sweep_dir, os.environ.get(STORAGE_ENV) or None, echo=lambda m: print(m, flush=True))
        (sweep_dir / "logs").mkdir(exist_ok=True)
        with open(sweep_dir / "logs" / f"worker-{socket.gethostname()}-{os.getpid()}.log", "a") as log_file:
            worker.log_file = log_file
            return worker.work()
    except EpochalError as err:
        print(f"epochal: error: {err}", file=sys.stderr)
        return err.exit_code
