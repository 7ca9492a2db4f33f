"""The console: progress within each epoch and one summary line per epoch.

On a terminal the progress is a tqdm bar; anywhere else (a log file, a pipe, a batch
job) tqdm stays silent (``disable=None``) and each log interval prints one plain line
instead, so logs hold no carriage returns. ``train.progress = false`` turns both off.
"""

from __future__ import annotations

from typing import Callable

from tqdm.auto import tqdm

from epochal.callbacks.base import Callback
from epochal.run_folder import format_metrics


def interval_line(run, records: list[dict[str, float]], max_epochs: int) -> str:
    """One log interval as a plain line: where training is, the newest loss and lr, the throughput."""
    last, state = records[-1], run.state
    line = (f"epoch {state.epoch + 1}/{max_epochs}  step {state.batch_in_epoch}/{run.steps_per_epoch} "
            f"({state.step} total)  loss {last['loss']:.4g}  lr {last['lr']:.3g}")
    if "steps_per_second" in last:
        line += f"  {last['steps_per_second']:.3g} steps/s"
    return line


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
                        disable=None if self.progress else True)

    def on_log(self, run, step: int, records: list[dict[str, float]]) -> None:
        if self.bar is None:
            return
        if not self.bar.disable:
            self.bar.update(len(records))
            self.bar.set_postfix(loss=f"{records[-1]['loss']:.4g}")
        elif self.progress:
            self.print(interval_line(run, records, self.max_epochs))

    def on_epoch_end(self, run) -> None:
        self._close()
        state = run.state
        evaluated = bool(state.eval_epochs) and state.eval_epochs[-1] == state.epoch
        line = f"epoch {state.epoch}/{self.max_epochs}  loss {state.epoch_train_loss():.4g}"
        self.print(f"{line}  {format_metrics(state.metrics) if evaluated else ''}".rstrip())

    def on_fit_end(self, run) -> None:
        self._close()


def setup_progress(iterable, desc: str, total: int | None = None):
    """A long setup step (corpus generation, string sampling): a bar on a terminal, silent elsewhere."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=None)
