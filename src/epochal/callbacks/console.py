"""The console: a progress bar per epoch and one summary line per epoch."""

from __future__ import annotations

from typing import Callable

from tqdm.auto import tqdm

from epochal.callbacks.base import Callback
from epochal.records import format_metrics


class Console(Callback):
    def __init__(self, log: Callable[[str], None], progress: bool, max_epochs: int):
        self.print, self.progress, self.max_epochs = log, progress, max_epochs
        self.bar = None

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_start(self, run) -> None:
        self._close()
        self.bar = tqdm(total=run.steps_per_epoch, initial=run.state.batch_in_epoch, leave=False,
                        dynamic_ncols=True, desc=f"epoch {run.state.epoch + 1}/{self.max_epochs}",
                        disable=not self.progress)

    def on_log(self, run, step: int, records: list[dict[str, float]]) -> None:
        if self.bar is not None:
            self.bar.update(len(records))
            self.bar.set_postfix(loss=f"{records[-1]['loss']:.4g}")

    def on_epoch_end(self, run) -> None:
        self._close()
        state = run.state
        evaluated = bool(state.eval_epochs) and state.eval_epochs[-1] == state.epoch
        line = f"epoch {state.epoch}/{self.max_epochs}  loss {state.epoch_train_loss():.4g}"
        self.print(f"{line}  {format_metrics(state.metrics) if evaluated else ''}".rstrip())

    def on_fit_end(self, run) -> None:
        self._close()
