"""When to checkpoint: every N epochs, every N steps, every M minutes, on a gate pass, on a new best."""

from __future__ import annotations

import time

from epochal.callbacks.base import Callback
from epochal.config import CheckpointConfig


class Checkpointing(Callback):
    """Runs after the other callbacks, so a checkpoint holds their updated state.

    An epoch checkpoint is written once; checkpoint_gate.pt, best.pt and last.pt
    are hard links to it, not copies.
    """

    def __init__(self, config: CheckpointConfig):
        self.config = config
        self.last_time = time.monotonic()

    def on_fit_start(self, fit) -> None:
        self.last_time = time.monotonic()

    def on_step_end(self, fit) -> None:
        step, every_steps, every_minutes = fit.state.step, self.config.every_steps, self.config.every_minutes
        due = (every_steps and step % every_steps == 0) or (
            every_minutes and time.monotonic() - self.last_time >= every_minutes * 60
        )
        if due:
            fit.save_checkpoint(f"checkpoint_step_{step:08d}.pt", "step")
            self.last_time = time.monotonic()

    def on_epoch_end(self, fit) -> None:
        links = []
        if fit.gate is not None and fit.gate.passed_now:
            links.append("checkpoint_gate.pt")
        if fit.best is not None and fit.best.improved_now:
            links.append("best.pt")
        epoch, every = fit.state.epoch, self.config.every_epochs
        if every and (epoch % every == 0 or fit.state.should_stop or epoch == fit.config.train.max_epochs):
            fit.save_checkpoint(f"checkpoint_epoch_{epoch:04d}.pt", "epoch", tuple(links))
        elif links:
            fit.save_checkpoint(links[0], links[0].removesuffix(".pt"), tuple(links[1:]))
