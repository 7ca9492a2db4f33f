"""Fault-injection points for tests and external harnesses (documented; keep them working).

- ``EPOCHAL_KILL_AT_STEP=N``: the process SIGKILLs itself right after optimizer step N,
  as a crash would (every run, from the CLI or the Python API).
- ``EPOCHAL_TEST_WRITE_DELAY=S``: checkpoint writes sleep S seconds between chunks, so a
  test can kill the process in the middle of a write (checkpoint.py).
"""

from __future__ import annotations

import os
import signal

from epochal.callbacks.base import Callback

KILL_ENV = "EPOCHAL_KILL_AT_STEP"


class KillAtStep(Callback):
    """SIGKILL this process right after optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run) -> None:
        if run.state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_hooks() -> list[Callback]:
    """The KillAtStep hook when the environment asks for one."""
    step = os.environ.get(KILL_ENV)
    return [KillAtStep(int(step))] if step else []
