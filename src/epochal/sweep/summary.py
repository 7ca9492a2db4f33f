"""sweep.json: one entry per point with its parameters, value, spread, status and failure reason.

Built from the study (Optuna's trials, grouped by point key: a point tried by several
trials, a retry or a duplicate, is one entry) and the run folders in ``runs/``.
Rewritten whole, atomically, after every trial by whichever worker finished it.
"""

from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path

from epochal.io import atomic_write_text
from epochal.run_folder import finite_or_none
from epochal.sweep.spec import SweepSpec, point_key, run_id
from epochal.sweep.store import require_optuna, retried_numbers

# Which trial speaks for a point when several tried it: a finished one over one still going.
PRECEDENCE = ("completed", "pruned", "gate_failed", "failed", "running", "waiting", "interrupted")


def trial_status(trial, retried: set[int]) -> str:
    S = require_optuna().trial.TrialState
    if trial.state == S.COMPLETE:
        return "completed"
    if trial.state == S.PRUNED:
        return "pruned"
    if trial.state == S.RUNNING:
        return "running"
    if trial.state == S.WAITING:
        return "waiting"
    if trial.number in retried or "failure_reason" not in trial.user_attrs:
        return "interrupted"  # a retry carries its point on
    return "gate_failed" if trial.user_attrs.get("gate_failed") else "failed"


def points(study, spec: SweepSpec, sweep_dir: Path) -> list[dict]:
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    grouped: dict[str, list] = {}
    for t in trials:
        if len(t.params) == len(spec.space) and "surplus" not in t.user_attrs:
            grouped.setdefault(point_key(t.params), []).append(t)
    entries = []
    for key, group in grouped.items():
        ranked = sorted(group, key=lambda t: (PRECEDENCE.index(trial_status(t, retried)), t.number))
        lead = ranked[0]
        status = trial_status(lead, retried)
        values = {int(seed): v for seed, v in lead.user_attrs.get("values", {}).items()}
        numbers = list(values.values())
        entry = {
            "point": key, "params": dict(lead.params), "status": status,
            "value": lead.value if status == "completed" else None,
            "std": statistics.stdev(numbers) if len(numbers) > 1 else (0.0 if numbers else None),
            "min": min(numbers, default=None), "max": max(numbers, default=None),
            "values": {str(seed): v for seed, v in sorted(values.items())},
            "statuses": lead.user_attrs.get("statuses", {}),
            "gate_passed": lead.user_attrs.get("gate_passed"),
            "failure_reason": lead.user_attrs.get("failure_reason") or lead.user_attrs.get("pruned_reason"),
            "trials": sorted(t.number for t in group),
            "runs": {str(seed): f"runs/{run_id(key, seed)}" for seed in spec.seeds
                     if (sweep_dir / "runs" / run_id(key, seed)).is_dir()},
        }
        entries.append(entry)
    sign = 1 if spec.direction == "minimize" else -1
    entries.sort(key=lambda e: (e["value"] is None, sign * (e["value"] or 0.0), e["trials"][0]))
    return entries


def summarize(study, spec: SweepSpec, sweep_dir: Path, state: str = "running") -> dict:
    found = points(study, spec, sweep_dir)
    counts = {status: sum(e["status"] == status for e in found) for status in PRECEDENCE}
    best = next((e for e in found if e["status"] == "completed"), None)
    previous = read_summary(sweep_dir)
    return {
        "sweep": sweep_dir.name, "state": state, "study": study.study_name,
        "storage": previous.get("storage"), "created": previous.get("created"),
        "updated": datetime.datetime.now().isoformat(timespec="seconds"),
        "task": spec.task, "method": spec.method, "metric": spec.metric, "direction": spec.direction,
        "value": spec.value, "seeds": spec.seeds, "points_asked": spec.points, "counts": counts,
        "best": None if best is None else {k: best[k] for k in ("point", "params", "value", "std")},
        "points": found,
        "trials": len(study.get_trials(deepcopy=False)),
    }


def read_summary(sweep_dir: Path) -> dict:
    try:
        return json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


def write_summary(sweep_dir: Path, study, spec: SweepSpec, state: str = "running") -> dict:
    summary = summarize(study, spec, sweep_dir, state)
    atomic_write_text(sweep_dir / "sweep.json", json.dumps(finite_or_none(summary), indent=1) + "\n")
    return summary
