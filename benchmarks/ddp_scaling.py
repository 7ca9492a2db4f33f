"""DDP scaling: step time at world size 1 and 2 for the same model and global batch, and the
collectives each step makes, counted.

Each repeat trains the same MLP for the same steps once in a plain process and once under
``torchrun --nproc-per-node 2`` (in a shuffled order); the ratio of the step times is taken
within the repeat and reported as min / median / max over the repeats. On a CPU the two
processes use gloo and share the machine's cores: the number says what the communication and
the sharing cost there, not what GPUs gain.

Collectives are counted, not assumed: DDP's gradient all-reduces through a comm hook that
counts its buckets, and every call of torch.distributed's collectives (all_reduce, broadcast,
the *_object calls, barrier, DDP's buffer broadcast) through a wrapper, from the first step to
the last.

    OMP_NUM_THREADS=1 python benchmarks/ddp_scaling.py [--steps 400] [--repeats 3] [--width 256]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import epochal
from epochal.tasks import Built, Task, register_task

COUNTED = ("all_reduce", "broadcast", "all_gather", "gather", "barrier", "broadcast_object_list",
           "all_gather_object", "gather_object", "_broadcast_coalesced")
BATCH, LOG_EVERY = 64, 50


@dataclass
class ScalingConfig:
    n: int = 25600  # examples
    dim: int = 64  # input and output width
    width: int = 256  # hidden width: sets the cost of a step


class ScalingTask(Task):
    name = "ddp-scaling-mlp"
    summary = "benchmark MLP"
    Config = ScalingConfig

    def build(self, cfg, run):
        generator = torch.Generator().manual_seed(1234)
        x = torch.randn(cfg.n, cfg.dim, generator=generator)
        model = nn.Sequential(nn.Linear(cfg.dim, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width), nn.GELU(),
                              nn.Linear(cfg.width, cfg.dim))
        return Built(model, {"x": x, "y": torch.sin(x)})

    def loss(self, model, batch):
        return {"loss": F.mse_loss(model(batch["x"]), batch["y"])}

    def evaluate(self, model, ctx):
        return {}


register_task(ScalingTask)


class Count(epochal.Callback):
    """Counts collectives from the first step to the last; DDP's gradient buckets through a comm hook."""

    def __init__(self):
        self.calls: Counter = Counter()
        self.counting = False

    def on_fit_start(self, run):
        if dist.is_initialized():
            for name in COUNTED:
                setattr(dist, name, self._counted(name, getattr(dist, name)))
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def hook(state, bucket):  # DDP's own all-reduce of one gradient bucket, counted once here
                if not self.counting:
                    return allreduce_hook(state, bucket)
                self.calls["ddp gradient all_reduce (buckets)"] += 1
                self.counting = False  # the hook's all_reduce call is this same collective
                try:
                    return allreduce_hook(state, bucket)
                finally:
                    self.counting = True

            run.step.model.register_comm_hook(None, hook)
        self.counting = True

    def _counted(self, name, call):
        def counted(*args, **kwargs):
            if self.counting:
                self.calls[name] += 1
            return call(*args, **kwargs)

        return counted

    def on_fit_end(self, run):
        self.counting = False
        self.steps, self.seconds = run.state.step, run.state.train_seconds


def worker(steps: int, width: int, out: str) -> None:
    count = Count()
    overrides = {"train.max_epochs": 1, "train.batch_size": BATCH, "train.progress": False,
                 "train.log_every": LOG_EVERY, "checkpoint.every_epochs": 0, "task.n": steps * BATCH,
                 "task.width": width, "log.plots": False}
    epochal.run("ddp-scaling-mlp", overrides=overrides, out_dir=out, experiment_id="scaling", overwrite=True,
                callbacks=[count], log=lambda _: None)
    if int(os.environ.get("RANK", 0)) == 0:
        print("RESULT " + json.dumps({"step_ms": 1000 * count.seconds / count.steps, "steps": count.steps,
                                      "calls": dict(count.calls)}))


def launch(world: int, steps: int, width: int, out: str) -> dict:
    script = [os.path.abspath(__file__), "--worker", "--steps", str(steps), "--width", str(width), "--out", out]
    prefix = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                                   str(world), "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
    proc = subprocess.run(prefix + script, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"world size {world} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.width, args.out)
        return
    times: dict[int, list[float]] = {1: [], 2: []}
    ratios, counted = [], {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            order = [1, 2]
            random.shuffle(order)
            measured = {world: launch(world, args.steps, args.width, f"{out}/ws{world}") for world in order}
            for world, result in measured.items():
                times[world].append(result["step_ms"])
            ratios.append(measured[2]["step_ms"] / measured[1]["step_ms"])
            counted = measured[2]
    print(f"MLP width {args.width}, global batch {BATCH}, {args.steps} steps, log every {LOG_EVERY}, "
          f"{args.repeats} paired repeats, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for world in (1, 2):
        t = times[world]
        print(f"world size {world}: step time min {min(t):.3f} / median {statistics.median(t):.3f} / "
              f"max {max(t):.3f} ms")
    print(f"ws2 / ws1 step time: min {min(ratios):.2f} / median {statistics.median(ratios):.2f} / "
          f"max {max(ratios):.2f}")
    steps = counted["steps"]
    print(f"collectives at world size 2 over {steps} steps (rank 0, counted):")
    for name, calls in sorted(counted["calls"].items()):
        print(f"  {name:36s} {calls:6d}  ({calls / steps:.3f} per step)")


if __name__ == "__main__":
    main()
