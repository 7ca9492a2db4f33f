"""When to checkpoint: every N epochs, every N steps, every M minutes (gate and best ask for their own)."""

from __future__ import annotations

import time

from epochal.callbacks.base import Callback
from epochal.config import CheckpointConfig
from epochal.decisions import Save


class Checkpointing(Callback):
    def __init__(self, config: CheckpointConfig, max_epochs: int):
        self.config, self.max_epochs = config, max_epochs
        self.last_time = time.monotonic()

    def on_fit_start(self, run) -> None:
        self.last_time = time.monotonic()

    def on_step_end(self, run) -> Save | None:
        every_steps, every_minutes = self.config.every_steps, self.config.every_minutes
        due = (every_steps and run.state.step % every_steps == 0) or (
            every_minutes and time.monotonic() - self.last_time >= every_minutes * 60
        )
        if not due:
            return None
        self.last_time = time.monotonic()
        return Save("step")

    def on_epoch_end(self, run) -> Save | None:
        epoch, every = run.state.epoch, self.config.every_epochs
        return Save("epoch") if every and (epoch % every == 0 or epoch == self.max_epochs) else None
