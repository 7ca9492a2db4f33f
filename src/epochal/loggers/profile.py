"""``--profile START:STOP``: a torch.profiler trace of optimizer steps START..STOP into the run folder.

The trace (profile/trace_steps_START-STOP.json) opens in chrome://tracing or Perfetto;
profile/summary.txt is the operator table sorted by total time.
"""

from __future__ import annotations

from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from epochal.callbacks.base import Callback


class Profiler(Callback):
    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.profiler: profile | None = None

    def _start_if_due(self, run) -> None:
        if self.profiler is None and run.state.step == self.first - 1:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()

    def _stop(self, run) -> None:
        if self.profiler is None:
            return
        self.profiler.__exit__(None, None, None)
        folder = Path(run.dir) / "profile"
        folder.mkdir(exist_ok=True)
        trace = folder / f"trace_steps_{self.first}-{min(self.last, run.state.step)}.json"
        self.profiler.export_chrome_trace(str(trace))
        sort = "cuda_time_total" if run.device.type == "cuda" else "cpu_time_total"
        (folder / "summary.txt").write_text(self.profiler.key_averages().table(sort_by=sort, row_limit=40) + "\n")
        self.profiler = None
        run.print(f"profile: steps {self.first}..{min(self.last, run.state.step)} traced to {trace}")

    def on_fit_start(self, run) -> None:
        self._start_if_due(run)

    def on_step_end(self, run) -> None:
        if run.state.step >= self.last:
            self._stop(run)
        self._start_if_due(run)

    def on_fit_end(self, run) -> None:
        self._stop(run)  # training ended inside the window
