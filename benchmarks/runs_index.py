"""The runs index over many run folders: epochal.load_runs on 1,000 folders, the first call (every folder read,
the cache written) and a second one (the cache checked against each folder's files), repeated.

Each folder is what epochal writes: config.toml and a result.json with a loss for each of 2,000 steps.

    python benchmarks/runs_index.py [--runs 1000] [--steps 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import epochal


def make_runs(root: Path, runs: int, steps: int) -> None:
    for i in range(runs):
        folder = root / f"sweep{i // 100}" / f"run{i:05d}"
        folder.mkdir(parents=True)
        folder.joinpath("config.toml").write_text(
            f'experiment_id = "run{i:05d}"\n[task]\nname = "toy"\nhidden = {16 + i % 4 * 16}\n[optim]\n'
            f'lr = {1e-4 * (i + 1)}\nweight_decay = 0.01\n[train]\nseed = {i % 3}\nbatch_size = 64\n')
        folder.joinpath("result.json").write_text(json.dumps({
            "task": "toy", "status": "completed", "epochs": 10, "steps": steps, "metrics": {"eval_mse": 0.1},
            "curves": {"train_loss": [0.5 / (1 + k) for k in range(steps)]},
            "metadata": {"stop_reason": "max_epochs reached", "train_seconds": 12.5}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    first, second = [], []
    with tempfile.TemporaryDirectory(prefix="epochal-runs-") as tmp:
        make_runs(Path(tmp) / "results", args.runs, args.steps)
        for repeat in range(args.repeats):
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / f"cache{repeat}")  # a cold cache each repeat
            for times in (first, second):
                started = time.perf_counter()
                frame = epochal.load_runs(Path(tmp) / "results")
                times.append(time.perf_counter() - started)
                assert len(frame) == args.runs
    for name, times in (("first call (cold cache)", first), ("second call (cache)", second)):
        print(f"{name:24s} min {min(times):.2f} s  median {statistics.median(times):.2f} s  max {max(times):.2f} s"
              f"  ({args.runs} run folders, {args.steps}-step curves)")


if __name__ == "__main__":
    main()
