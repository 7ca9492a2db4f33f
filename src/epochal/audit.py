"""`epochal audit`: prove determinism and exact resume for one config.

Three runs of the same config in subprocesses: A and B uninterrupted (same
seed: are they identical?), and C killed with SIGKILL at N random steps and
resumed after each kill. The per-step losses and a hash of the final weights
of all three must agree; the first difference is reported if not.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from epochal.faults import KILL_ENV
from epochal.resolve import resolve_config

def weights_hash(run_dir: Path) -> str:
    tensors = load_file(str(run_dir / "checkpoints" / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
        ok = ok and diff is None and same_weights
    print("audit passed" if ok else "audit FAILED")
    return 0 if ok else 1
