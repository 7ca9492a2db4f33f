"""`epochal audit`: prove determinism and exact resume for one config.

Three runs of the same config in subprocesses: A and B uninterrupted (same
seed: are they identical?), and C killed with SIGKILL at N random steps and
resumed after each kill. As seed 003 (5.10) asks, B and C are compared with A
on the initial weights, the training data and each epoch's batch order, the
per-step losses, the evaluation and test metrics, the final weights and every
other file of the run folders except timestamps; the first aspect to differ is named.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from epochal.checkpoint import tensors_sha256
from epochal.faults import KILL_ENV
from epochal.loggers.perf import PERF_KEYS
from epochal.resolve import resolve_config

def weights_hash(run_dir: Path) -> str:
    """The run's exported weights (model.safetensors) as one hash."""
    return tensors_sha256(load_file(str(run_dir / "checkpoints" / "model.safetensors")))


def first_difference(a: list, b: list) -> str | None:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} steps"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"step {i + 1}: {x!r} vs {y!r}"
    return None


def _command(task: str, config: Path, out: str, run_id: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "epochal.cli", "run", task, "--config", str(config), "--out", out, "--id", run_id,
           "--no-progress"]
    return cmd + (["--resume", "auto"] if resume else ["--overwrite"])


def _run(cmd: list[str], kill_at: int | None = None) -> int:
    env = dict(os.environ)
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode


def audit(task: str, config: str | None, overrides: dict, kills: int, every_steps: int, out: str,
          run_id: str = "audit") -> int:
    """Runs ``<run_id>-a``, ``-b`` and ``-killed`` of one resolved config, which the three subprocesses read
    from one TOML file, so they train exactly what was resolved here (tables included)."""
    task_obj, resolved = resolve_config(task, config, {**overrides, "checkpoint.every_steps": every_steps})
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp, "audit.toml")
        config_file.write_text(resolved.to_toml())
        return _audit(task_obj.name, config_file, resolved.group, kills, out, run_id)


def _audit(task: str, config: Path, group: str, kills: int, out: str, run_id: str) -> int:
    runs = {name: Path(out, group, f"{run_id}-{name}") for name in ("a", "b", "killed")}
    for name in ("a", "b"):
        code = _run(_command(task, config, out, runs[name].name, resume=False))
        if code != 0 or not (runs[name] / "result.json").exists():
            print(f"run {name} failed with exit code {code}")
            return 1
    total = json.loads((runs["a"] / "result.json").read_text())["steps"]
    points = sorted(random.Random(0).sample(range(1, total), min(kills, total - 1)))
    print(f"kill points (steps of {total}): {points}")
    resume = False
    for point in points:
        code = _run(_command(task, config, out, runs["killed"].name, resume), kill_at=point)
        if code != -signal.SIGKILL:
            print(f"expected a SIGKILL at step {point}, the run exited with {code}")
            return 1
        resume = True
    if _run(_command(task, config, out, runs["killed"].name, resume)) != 0:
        print("the final resume failed")
        return 1
    results = {name: json.loads((path / "result.json").read_text()) for name, path in runs.items()}
    hashes = {name: weights_hash(path) for name, path in runs.items()}
    ok = True
    for name in ("b", "killed"):
        diff = first_difference(results["a"]["curves"]["train_loss"], results[name]["curves"]["train_loss"])
        same_weights = hashes[name] == hashes["a"]
        print(f"a vs {name}: losses {'identical' if diff is None else 'differ at ' + diff}, "
              f"weights {'identical' if same_weights else 'differ'} ({hashes[name][:16]})")
        differences = compare_runs(runs["a"], runs[name])
        for aspect, difference in differences:
            print(f"  {aspect}: {'identical' if difference is None else 'DIFFER: ' + difference}")
        first = next((aspect for aspect, difference in differences if difference is not None), None)
        if first is not None:
            print(f"a vs {name}: the first to differ is {first}")
        ok = ok and diff is None and same_weights and first is None
    print("audit passed" if ok else "audit FAILED")
    return 0 if ok else 1


# What may differ between two runs of one config: when and where they ran, and their names.
_VOLATILE = {"env.json": {"started", "command"},
             "result.json": {"experiment_id", "metadata.train_seconds"},
             "history.jsonl": {"seconds", *PERF_KEYS}}  # wall time and throughput are measurements, not results


def compare_runs(a: Path, b: Path) -> list[tuple[str, str | None]]:
    """Seed 003 5.10, in the order a difference would arise: (aspect, first difference or None) for the
    initial weights, the training data and each epoch's batch order, the losses, the evaluation and test
    metrics, the final weights, and every other file of the two run folders except timestamps and names."""
    env = {run: _json(run / "env.json") for run in (a, b)}
    result = {run: _json(run / "result.json") for run in (a, b)}
    history = {run: _history(run) for run in (a, b)}
    curves = {run: {k: v for k, v in result[run].get("curves", {}).items() if k != "train_loss"} for run in (a, b)}
    return [
        ("initial weights", _differ(env[a].get("initial_weights_sha256"), env[b].get("initial_weights_sha256"))),
        ("training data", _differ(env[a].get("data"), env[b].get("data"))),
        ("batch order", first_difference([h.get("batch_order_sha256") for h in history[a] if "epoch_end" in h],
                                         [h.get("batch_order_sha256") for h in history[b] if "epoch_end" in h])),
        ("losses", first_difference(result[a]["curves"]["train_loss"], result[b]["curves"]["train_loss"])),
        ("eval and test metrics", _differ((curves[a], result[a].get("test")), (curves[b], result[b].get("test")))),
        ("final weights", _differ(weights_hash(a), weights_hash(b))),
        ("artifacts", _artifacts_differ(a, b)),
    ]


def _differ(x, y) -> str | None:
    return None if x == y else f"{str(x)[:80]} vs {str(y)[:80]}"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _history(run: Path) -> list[dict]:
    path = run / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _artifacts_differ(a: Path, b: Path) -> str | None:
    """Every file besides the checkpoints' own bytes (their weights are compared above): same names, same
    content once the volatile fields are dropped."""
    def files(run: Path) -> set[str]:
        return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and not p.is_symlink()  # seed names
                and p.name != ".lock"
                and not (p.parent.name == "checkpoints" and p.suffix == ".pt")
                and p.parent.name != "plots"  # drawn from the data compared above; PNG bytes vary by process
                and p.name not in ("manifest.json", "config.toml", "report.html")}

    names_a, names_b = files(a), files(b)
    if names_a != names_b:
        return f"files only in one run: {sorted(names_a ^ names_b)[:5]}"
    for name in sorted(names_a):
        if _normalised(a / name) != _normalised(b / name):
            return name
    return None


def _normalised(path: Path):
    volatile = _VOLATILE.get(path.name)
    if volatile is None:
        return path.read_bytes()
    if path.suffix == ".jsonl":  # a warning line is about the process (Python shows one once per process), not the run
        records = map(json.loads, path.read_text().splitlines())
        return [_without(record, volatile) for record in records if record.get("event") != "warning"]
    return _without(json.loads(path.read_text()), volatile)


def _without(record: dict, dotted: set[str]) -> dict:
    out = dict(record)
    for key in dotted:
        head, _, rest = key.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = _without(out[head], {rest})
        else:
            out.pop(key, None)
    return out
