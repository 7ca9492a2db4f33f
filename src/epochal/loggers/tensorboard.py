"""TensorBoard: event files in <run>/tensorboard, read by `tensorboard --logdir <run or out_dir>`.

Resume opens a new event file with ``purge_step`` = the first step trained again:
TensorBoard then drops what a killed process wrote from that step on. A rollback
writes the same purge marker by hand.
"""

from __future__ import annotations

import json
from typing import Any

from epochal.loggers.base import RunInfo, TrackerLogger


class TensorBoardLogger(TrackerLogger):
    tracker = "tensorboard"

    def __init__(self) -> None:
        super().__init__()
        self.writer = None

    def import_library(self) -> None:
        import torch.utils.tensorboard  # noqa: F401

    def open(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        resumed = info.start_step > 0
        self.writer = SummaryWriter(str(info.dir / "tensorboard"), purge_step=info.start_step + 1 if resumed else None)
        if not resumed:
            params = {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
                      for key, value in info.params.items() if value is not None}
            for summary in hparams(params, {}):  # the config in the HParams tab, in this run's own folder
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(info.config, indent=1) + "\n```", 0)

    def write(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        # What add_scalar writes (a simple_value per tag), but one event a step for all values: add_scalar
        # builds an event and a NumPy array per value, work that holds the GIL the training loop needs.
        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
        self.writer.file_writer.add_summary(Summary(value=values), step)

    def rewind(self, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.writer.file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    def flush(self) -> None:
        self.writer.flush()

    def close(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("steps") or 0)
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("steps", "epochs"):
                self.writer.add_scalar(f"summary/{key}", value, step)
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=1) + "\n```", step)
        self.writer.close()
