"""Checkpoint stall: how long a checkpoint holds up training, against the time of one step.

One process: trains TASK with a checkpoint every N steps twice, with the background writer and with
synchronous writes, and times each ``Training.save`` call on the training thread (the copy off the device,
plus the whole write when synchronous).

``--fsdp``: under torchrun (``--procs`` processes, gloo on CPU, NCCL on GPUs), a model of ``--depth`` blocks of
``--width`` x ``--width`` (default 12 x 2048: 50M parameters) sharded with train.parallel = "fsdp" writes
sharded checkpoints, synchronously and asynchronously (``dcp.async_save``: the copy to host memory runs on a
thread while the next step computes, and that step's optimizer update waits for it), in pairs whose order
alternates, ``--repeats`` times in one launch. Each save's blocking time on rank 0's training thread is timed,
the wait for its copy included; the final save of a run (which waits for its write) is left out. Reported:
the median blocking time of each variant against a step's time, and the asynchronous/synchronous ratio of
each pair, min / median / max (goal: at most 0.10; on a GPU, at most 100 ms for 1B parameters:
``--width 8192 --depth 15``).

    python benchmarks/checkpoint_stall.py [--task walks] [--steps-between 20] [--epochs 1]
    OMP_NUM_THREADS=1 python benchmarks/checkpoint_stall.py --fsdp [--procs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

import epochal
from epochal.training import Training


class Timed:
    """Times every ``Training.save`` on the training thread while in use: (step, seconds) pairs. A sharded
    asynchronous save's copy to host memory may still run when the next step would change what it copies;
    the wait there (``Training.await_staging``) is added to that save's time."""

    def __init__(self):
        self.stalls: list[tuple[int, float]] = []

    def __enter__(self):
        self.originals = save, await_staging = Training.save, Training.await_staging
        stalls = self.stalls

        def timed(run, *args, **kwargs):
            start = time.perf_counter()
            save(run, *args, **kwargs)
            stalls.append((run.state.step, time.perf_counter() - start))

        def timed_wait(run):
            if run.staging is None:
                return
            start = time.perf_counter()
            await_staging(run)
            step, seconds = stalls[-1]
            stalls[-1] = (step, seconds + time.perf_counter() - start)

        Training.save, Training.await_staging = timed, timed_wait
        return self

    def __exit__(self, *exc):
        Training.save, Training.await_staging = self.originals


def measure(task: str, config: str | None, every: int, epochs: int, async_write: bool) -> tuple[list[float], float]:
    with Timed() as timed:
        overrides = {"train.max_epochs": epochs, "train.progress": False, "checkpoint.every_steps": every,
                     "checkpoint.every_epochs": 0, "checkpoint.async_write": async_write, "gate.above": {},
                     "gate.below": {}}
        result = epochal.run(task, config, overrides=overrides, out_dir="/tmp/epochal-bench",
                             experiment_id=f"stall-{async_write}", overwrite=True, log=lambda _: None)
    steps = result.result["steps"]
    return [seconds for _, seconds in timed.stalls], result.result["metadata"]["train_seconds"] / steps


class Block(nn.Module):
    """One unit FSDP shards on its own: a square layer and its activation."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def squared_error(model, batch):
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def fsdp_run(args, out: str, run_id: str, asynchronous: bool) -> dict:
    """One sharded run with a save every ``args.every`` steps; rank 0's blocking times and step time."""
    torch.manual_seed(0)
    model = nn.Sequential(*(Block(args.width) for _ in range(args.depth)))
    examples = args.batch * 4
    data = torch.utils.data.TensorDataset(torch.randn(examples, args.width), torch.randn(examples, args.width))
    steps = args.every * (args.saves + 1)
    config = {"train": {"parallel": "fsdp", "fsdp_modules": ["Block"], "max_steps": steps, "batch_size": args.batch,
                        "log_every": args.every, "progress": False, "max_epochs": steps},
              "checkpoint": {"every_steps": args.every, "every_epochs": 0, "async_write": asynchronous,
                             "keep_last": 1}, "log": {"plots": False}}
    with Timed() as timed:
        result = epochal.fit(model, data, squared_error, config=config, out_dir=out, experiment_id=run_id,
                             resume="never", log=lambda _: None)
    during = [seconds for step, seconds in timed.stalls if step < result.result["steps"]]
    step_seconds = (result.result["metadata"]["train_seconds"] - sum(s for _, s in timed.stalls)) / steps
    return {"async": asynchronous, "stalls": during, "step": step_seconds,
            "parameters": sum(p.numel() for p in model.parameters())}  # a sharded parameter counts whole


def fsdp_worker(args) -> None:
    """Under torchrun: the paired runs, rank 0 printing one RESULT line each."""
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for asynchronous in order:
            run_id = f"stall-{repeat}-{'async' if asynchronous else 'sync'}"
            found = fsdp_run(args, args.out, run_id, asynchronous)
            if int(os.environ.get("RANK", 0)) == 0:
                print("RESULT " + json.dumps({"repeat": repeat, **found}), flush=True)
                shutil.rmtree(os.path.join(args.out, run_id), ignore_errors=True)  # each keeps ~2 copies of the state


def fsdp_main(args) -> None:
    out = tempfile.mkdtemp(prefix="epochal-stall-")
    script = [os.path.abspath(__file__), "--fsdp-worker", "--out", out, *sys.argv[1:]]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.procs), "--rdzv-backend",
               "c10d", "--rdzv-endpoint", "localhost:0", *script]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rows = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not rows:
        sys.exit(f"the sharded runs failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (gloo)"
    print(f"FSDP, {args.procs} processes on {device}, {rows[0]['parameters'] / 1e6:.1f}M parameters, "
          f"a save every {args.every} steps, {args.saves} saves a run, {args.repeats} pairs")
    for asynchronous in (False, True):
        runs = [row for row in rows if row["async"] == asynchronous]
        stall = statistics.median(s for row in runs for s in row["stalls"])
        step = statistics.median(row["step"] for row in runs)
        print(f"  {'asynchronous' if asynchronous else 'synchronous '}: median blocking {stall * 1e3:9.1f} ms a save, "
              f"a step {step * 1e3:8.1f} ms, blocking/step {stall / step:6.2f}")
    ratios = []
    for repeat in range(args.repeats):
        pair = {row["async"]: statistics.median(row["stalls"]) for row in rows if row["repeat"] == repeat}
        ratios.append(pair[True] / pair[False])
    print(f"  asynchronous / synchronous blocking, per pair: min {min(ratios):.3f}  median "
          f"{statistics.median(ratios):.3f}  max {max(ratios):.3f}  (goal <= 0.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="walks")
    parser.add_argument("--config")
    parser.add_argument("--steps-between", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fsdp", action="store_true", help="sharded checkpoints under torchrun, sync vs async")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=10, help="steps between saves (--fsdp)")
    parser.add_argument("--saves", type=int, default=3, help="timed saves a run (--fsdp)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fsdp_worker:
        fsdp_worker(args)
        return
    if args.fsdp:
        fsdp_main(args)
        return
    for async_write in (True, False):
        stalls, step_time = measure(args.task, args.config, args.steps_between, args.epochs, async_write)
        stall = statistics.median(stalls)
        print(f"{'background' if async_write else 'synchronous'} writes: median stall {stall * 1e3:.2f} ms "
              f"over {len(stalls)} checkpoints; step {step_time * 1e3:.2f} ms; stall/step {stall / step_time:.2f}")


if __name__ == "__main__":
    main()
