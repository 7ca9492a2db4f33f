"""TensorBoard: event files in <run>/tensorboard, read by `tensorboard --logdir <run or out_dir>`.

Resume opens a new event file that starts with a purge marker at the first step trained
again: TensorBoard then drops what a killed process wrote from that step on. A rollback
writes the same marker.

The event file is written here (``EventFile``), in TensorBoard's record format, rather than
through its SummaryWriter: without TensorFlow, TensorBoard checksums every record in pure
Python, about 100 us an event on a thread holding the GIL that the training loop needs (one
event a step: +4-6 % on a 2.6 ms CPU step). google-crc32c computes the same checksum in C.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from epochal.loggers.base import TrackedRun, TrackerLogger

_FILE_NUMBERS = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """The checksum of TensorBoard's (TFRecord's) record format: CRC-32C, rotated and offset."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """One TensorBoard event file: length-prefixed, checksummed Event protos, appended."""

    def __init__(self, folder: Path):
        from tensorboard.compat.proto.event_pb2 import Event

        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}"
        self.file = open(folder / name, "ab")
        self.add(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self.file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                        + struct.pack("<I", masked_crc32c(data)))

    def summary(self, summary, step: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.add(Event(wall_time=time.time(), summary=summary, **({} if step is None else {"step": step})))

    def restart_at(self, step: int) -> None:
        """TensorBoard's purge marker: values written before at ``step`` and later are dropped."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.add(Event(wall_time=time.time(), step=step, session_log=SessionLog(status=SessionLog.START)))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _scalars(values: dict[str, float]):
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])


class TensorBoardLogger(TrackerLogger):
    tracker = "tensorboard"

    def __init__(self) -> None:
        super().__init__()
        self.events: EventFile | None = None

    def import_library(self) -> None:
        import google_crc32c  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401

    def open(self, info: TrackedRun) -> None:
        from torch.utils.tensorboard.summary import hparams, text

        self.events = EventFile(info.dir / "tensorboard")
        if info.start_step > 0:
            self.events.restart_at(info.start_step + 1)
            return
        params = {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
                  for key, value in info.params.items() if value is not None}
        for summary in hparams(params, {}):  # the config in the HParams tab, in this run's own folder
            self.events.summary(summary)
        self.events.summary(text("config", "```\n" + json.dumps(info.config, indent=1) + "\n```"), 0)

    def write(self, step: int, values: dict[str, float]) -> None:
        self.events.summary(_scalars(values), step)  # one event a step holding every value

    def rewind(self, step: int) -> None:
        self.events.restart_at(step)

    def flush(self) -> None:
        self.events.flush()

    def close(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import text

        step = int(summary.get("steps") or 0)
        self.events.summary(_scalars({f"summary/{key}": value for key, value in summary.items()
                                      if isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and key not in ("steps", "epochs")}), step)
        self.events.summary(text("summary", "```\n" + json.dumps(summary, indent=1) + "\n```"), step)
        self.events.close()
