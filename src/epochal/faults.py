"""Fault-injection points for tests and external harnesses (documented; keep them working).

- ``EPOCHAL_KILL_AT_STEP=N``: the process SIGKILLs itself right after optimizer step N,
  as a crash would (every run, from the CLI or the Python API).
- ``EPOCHAL_TEST_WRITE_DELAY=S``: checkpoint writes sleep S seconds between chunks, so a
  test can kill the process in the middle of a write (checkpoint.py).
- ``EPOCHAL_TEST_STEP_DELAY=S``: every optimizer step is followed by S seconds of sleep, so a
  test can signal a run (or one of torchrun's ranks) while it trains; the numbers do not change.
- ``EPOCHAL_TEST_OOM_ABOVE=N``: a micro-batch of more than N examples raises torch's
  OutOfMemoryError after its forward pass (its random numbers drawn), as a GPU that is too
  small would: ``train.microbatch = "auto"`` is tested with it on a CPU (step.py).
  ``EPOCHAL_TEST_OOM_RANK=R``: only torchrun's rank R does.
"""

from __future__ import annotations

import os
import signal
import time

from epochal.callbacks.base import Callback

KILL_ENV = "EPOCHAL_KILL_AT_STEP"
DELAY_ENV = "EPOCHAL_TEST_STEP_DELAY"
OOM_ENV = "EPOCHAL_TEST_OOM_ABOVE"
OOM_RANK_ENV = "EPOCHAL_TEST_OOM_RANK"


def oom_above() -> int | None:
    """The micro-batch size above which EPOCHAL_TEST_OOM_ABOVE makes a step run out of memory; None: off.
    With EPOCHAL_TEST_OOM_RANK=R only torchrun's rank R runs out (the others must follow its split)."""
    value, rank = os.environ.get(OOM_ENV), os.environ.get(OOM_RANK_ENV)
    if not value or (rank is not None and rank != os.environ.get("RANK", "0")):
        return None
    return int(value)


class KillAtStep(Callback):
    """SIGKILL this process right after optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run) -> None:
        if run.state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SlowSteps(Callback):
    """Sleep ``seconds`` after every optimizer step."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, run) -> None:
        time.sleep(self.seconds)


def fault_hooks() -> list[Callback]:
    """The KillAtStep and SlowSteps hooks the environment asks for."""
    step, delay = os.environ.get(KILL_ENV), os.environ.get(DELAY_ENV)
    return [*([KillAtStep(int(step))] if step else []), *([SlowSteps(float(delay))] if delay else [])]
