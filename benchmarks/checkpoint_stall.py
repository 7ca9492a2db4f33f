"""Checkpoint stall: how long a checkpoint holds up training, against the time of one step.

Trains TASK with a checkpoint every N steps twice, with the background writer
and with synchronous writes, and times each ``Training.save`` call on the
training thread (the copy off the device, plus the whole write when synchronous).

    python benchmarks/checkpoint_stall.py [--task walks] [--steps-between 20] [--epochs 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import epochal
from epochal.training import Training


def measure(task: str, config: str | None, every: int, epochs: int, async_write: bool) -> tuple[list[float], float]:
    stalls: list[float] = []
    original = Training.save

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        original(self, *args, **kwargs)
        stalls.append(time.perf_counter() - start)

    Training.save = timed
    try:
        overrides = {"train.max_epochs": epochs, "train.progress": False, "checkpoint.every_steps": every,
                     "checkpoint.every_epochs": 0, "checkpoint.async_write": async_write, "gate.above": {},
                     "gate.below": {}}
        result = epochal.run(task, config, overrides=overrides, out_dir="/tmp/epochal-bench",
                             experiment_id=f"stall-{async_write}", overwrite=True, log=lambda _: None)
    finally:
        Training.save = original
    steps = result.result["steps"]
    return stalls, result.result["metadata"]["train_seconds"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="walks")
    parser.add_argument("--config")
    parser.add_argument("--steps-between", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    for async_write in (True, False):
        stalls, step_time = measure(args.task, args.config, args.steps_between, args.epochs, async_write)
        stall = statistics.median(stalls)
        print(f"{'background' if async_write else 'synchronous'} writes: median stall {stall * 1e3:.2f} ms "
              f"over {len(stalls)} checkpoints; step {step_time * 1e3:.2f} ms; stall/step {stall / step_time:.2f}")


if __name__ == "__main__":
    main()
