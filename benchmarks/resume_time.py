"""Resume time: from the resume to the first trained step, for a stream positioned at 10^3 .. 10^6 batches.

Two streams of the same examples: one with state (``state_dict``/``load_state_dict``), whose resume
loads its position, and one without, whose resume reads and skips every batch already trained on.
For each position P a run is preempted after its first step, and its checkpoint is then rewritten as
if P batches had been trained: the step, the data position, the stream's state and a P-long loss
curve (what a run that far holds), so positions are built, not trained. The resume (``epochal.fit``
with ``resume="must"``, the path ``epochal resume`` takes, without the process start) is timed from
the call to the end of its first step.

    python benchmarks/resume_time.py [--positions 1000,10000,100000,1000000] [--out /tmp/epochal-bench]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import IterableDataset

import epochal
from epochal.callbacks.base import Callback
from epochal.checkpoint import CheckpointStore, serialize

BATCH = 4


class Plain(IterableDataset):
    """Examples made from their index: cheap, so a skip costs what the loader's reading costs."""

    def __init__(self, n: int):
        self.n, self.next, self.start = n, 0, 0

    def __iter__(self):
        start, self.start = self.start, 0
        for i in range(start, self.n):
            self.next = i + 1
            yield torch.full((4,), float(i % 7))


class Stateful(Plain):
    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.start = state["next"]


class Preempt(Callback):
    """SIGTERM after the first step, as a scheduler would: the run saves and stops."""

    def on_step_end(self, run):
        if run.state.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


class FirstStep(Callback):
    def __init__(self):
        self.at: float | None = None

    def on_step_end(self, run):
        if self.at is None:
            self.at = time.perf_counter()


def loss_fn(model, batch):
    return model(batch).pow(2).mean()


def fit(stream: type[Plain], position: int, out: Path, run_id: str, **extra):
    torch.manual_seed(0)
    config = {"train": {"max_steps": position + 1, "batch_size": BATCH, "progress": False},
              "checkpoint": {"async_write": False}, "log": {"plots": False}}
    return epochal.fit(nn.Linear(4, 1), stream(BATCH * (position + 10)), loss_fn, config=config, out_dir=out,
                       experiment_id=run_id, log=lambda _: None, **extra)


def position_at(run_dir: Path, position: int) -> None:
    """Rewrite the run's newest checkpoint as if ``position`` batches of its first pass had been trained."""
    store = CheckpointStore(run_dir / "checkpoints", keep_last=3)
    payload = store.load("last.pt")
    state = payload["state"]["state"]
    state.update(step=position, batch_in_epoch=position)
    state["curves"] = {"train_loss": torch.full((position,), float(state["curves"]["train_loss"][0]),
                                                dtype=torch.float64)}
    stream = payload["state"]["data"].get("stream")
    if stream is not None:  # the stateful stream: its position is its dataset's state, and the loader's count
        payload["state"]["data"]["position"] = position
        stream["dataset_state"]["next"] = BATCH * position
        stream["_num_yielded"] = stream["_sampler_iter_yielded"] = position
    name = f"checkpoint_step_{position:08d}.pt"
    store.write(name, serialize(payload), {"kind": "preempt", "step": position, "epoch": 0,
                                           "batch_in_epoch": position, "saved": "built by resume_time.py"})
    store.link(name, "last.pt")


def resume_seconds(stream: type[Plain], position: int, out: Path) -> float:
    run_id = f"{stream.__name__.lower()}-{position}"
    stopped = fit(stream, position, out, run_id, callbacks=[Preempt()], resume="never")
    assert stopped.status == "preempted", stopped.status
    position_at(stopped.run_dir, position)
    first = FirstStep()
    started = time.perf_counter()
    resumed = fit(stream, position, out, run_id, callbacks=[first], resume="must")
    assert resumed.status == "completed" and resumed.result["steps"] == position + 1, resumed.result["steps"]
    return first.at - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", default="1000,10000,100000,1000000")
    parser.add_argument("--out", default="/tmp/epochal-bench/resume-time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    positions = [int(p) for p in args.positions.split(",")]
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    rows = {p: {s.__name__: resume_seconds(s, p, out) for s in (Stateful, Plain)} for p in positions}
    print("| position (batches) | stateful stream: resume to first step (s) | skipping stream (s) |")
    print("|---:|---:|---:|")
    for p, row in rows.items():
        print(f"| {p:,} | {row['Stateful']:.3f} | {row['Plain']:.3f} |")
    low, high = positions[0], positions[-1]
    growth = rows[high]["Stateful"] - rows[low]["Stateful"]
    print(f"stateful: resume({high:,}) - resume({low:,}) = {growth:.3f} s (goal: at most 0.5 s); "
          f"skipping: {rows[high]['Plain'] - rows[low]['Plain']:.3f} s")


if __name__ == "__main__":
    main()
