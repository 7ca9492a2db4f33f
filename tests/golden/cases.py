"""The golden runs: every built-in task at a small size, CPU, fp32.

The last bits of a CPU float result depend on the machine: torch, MKL and NumPy
pick their vector kernels for the CPU at hand. So each ``tests/golden/<case>.json``
holds one capture per kind of machine (``machine()``, with the commit it was taken
from). On a machine that has a capture, a run must reproduce it bit for bit: every
per-step loss and the final weights' hash. On any other machine the losses must
agree with the first capture to a relative 1e-5 per step: kernels round differently
by at most 1.8e-7 in fp32 (6e-14 in the float64 NumPy task), while any change of the
loop's numbers moves them by orders of magnitude more.

``python -m golden.cases [case ...]`` (from the tests folder) captures this machine's
runs, replacing its earlier capture. Take a new machine's capture from the commit
the others name, so that it proves the same thing; recapture every machine only in a
commit that changes the numbers on purpose, and say why in its message.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent
RELATIVE_TOLERANCE = 1e-5  # another machine's kernels: well above their rounding, well below any real change

CASES: dict[str, tuple[str, dict]] = {
    # EMA, accumulation and dropout on: every piece of state a step touches.
    "toy": ("toy", {"train.max_epochs": 3, "train.grad_accum": 2, "task.n_train": 256, "task.n_eval": 64,
                    "task.dropout": 0.1, "ema.enabled": True, "ema.decay": 0.9}),
    "walks": ("walks", {"train.max_epochs": 2, "task.n_vertices": 16, "task.n_blocks": 2, "task.n_jumpers": 2,
                        "task.rule_distance": 3, "task.num_walks": 160, "task.walk_length": 34,
                        "task.eval_sequences": 40, "task.context": 16, "task.d_model": 32, "task.n_layers": 1,
                        "task.n_heads": 2}),
    "regex": ("regex", {"train.max_epochs": 2, "task.n_train": 300, "task.n_val": 60, "task.n_test": 60,
                        "task.n_test_ood": 60, "task.max_len": 8, "task.ood_min_len": 9, "task.ood_max_len": 12,
                        "task.d_model": 16, "task.d_ff": 32, "train.grad_accum": 2}),
    "flow-icfm": ("flow", {"group": "golden", "task.arch": "mlp", "task.flow": "icfm", "task.dataset": "moons",
                           "task.aug": "flip", "task.n_samples": 1000, "task.hidden": 32, "task.depth": 2,
                           "train.max_epochs": 2, "train.batch_size": 128, "schedule.warmup_steps": 4,
                           "ema.decay": 0.9}),
    "flow-otcfm": ("flow", {"group": "golden", "task.arch": "resmlp", "task.flow": "otcfm",
                            "task.dataset": "8gaussians", "task.aug": "none", "task.n_samples": 1000,
                            "task.hidden": 32, "task.depth": 2, "train.max_epochs": 2, "train.batch_size": 128,
                            "schedule.warmup_steps": 4, "ema.decay": 0.9}),
    "scratch-mlp": ("scratch-mlp", {}),
}


def run_case(name: str, out_dir: Path) -> dict:
    """Train one case; its per-step losses (exact floats) and, where exported, a hash of the final weights."""
    import torch

    import epochal
    from epochal.audit import weights_hash

    torch.set_num_threads(1)
    task, overrides = CASES[name]
    result = epochal.run(task, overrides={**overrides, "train.progress": False}, out_dir=out_dir,
                         experiment_id=name, log=lambda _: None)
    weights = result.run_dir / "checkpoints" / "model.safetensors"
    return {"train_loss": result.result["curves"]["train_loss"],
            "weights_sha256": weights_hash(result.run_dir) if weights.exists() else None}


def machine() -> str:
    """The kind of machine, as far as the last bits of a CPU float result go: the CPU (vendor,
    family, model and its vector extensions) and the versions of torch and NumPy."""
    import numpy
    import torch

    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if not line.strip():
            break  # the first processor describes them all
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    vectors = sorted(f for f in fields.get("flags", "").split() if f.startswith(("sse", "avx", "fma", "amx")))
    cpu = " ".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model", "model name"))
    features = hashlib.sha256(" ".join(vectors).encode()).hexdigest()[:12]
    return (f"{platform.machine()} {cpu if fields else platform.processor()} vector:{features} "
            f"torch {torch.__version__} numpy {numpy.__version__}")


def captures(name: str) -> list[dict]:
    return json.loads((GOLDEN / f"{name}.json").read_text())["captures"]


def mismatch(known: list[dict], now: dict, here: str) -> str | None:
    """Why a run ``now`` on machine ``here`` does not reproduce the captures ``known``; None if it does."""
    same = [capture for capture in known if capture["machine"] == here]
    reference = same[0] if same else known[0]
    expected, got = reference["train_loss"], now["train_loss"]
    if len(got) != len(expected):
        return f"{len(got)} steps, the capture has {len(expected)}"
    for step, (a, b) in enumerate(zip(got, expected), start=1):
        if (a != b) if same else not math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE):
            rule = "bit for bit on this machine" if same else f"within {RELATIVE_TOLERANCE:g} on another machine"
            return f"step {step}: loss {a!r} != captured {b!r} ({rule})"
    if same and now["weights_sha256"] != reference["weights_sha256"]:
        return f"final weights {now['weights_sha256']} != captured {reference['weights_sha256']}"
    return None


def main() -> None:
    import tempfile

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=GOLDEN).stdout.strip()
    here = machine()
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or list(CASES):
            path = GOLDEN / f"{name}.json"
            others = [c for c in captures(name) if c["machine"] != here] if path.exists() else []
            run = run_case(name, Path(tmp))
            capture = {"machine": here, "code": commit, **run}
            path.write_text(json.dumps({"captures": others + [capture]}, indent=0) + "\n")
            print(f"{name}: {len(run['train_loss'])} steps, weights {run['weights_sha256']} on {here}")


if __name__ == "__main__":
    main()
