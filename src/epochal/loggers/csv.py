"""CSV: <run>/metrics.csv in long form, one row per value: step, name, value.

Long form takes values that appear later (eval metrics, test results) without
rewriting a header, and reads into a table with any tool. On resume the rows after
the checkpoint's step are dropped first, as history.jsonl's are; a rollback does the same.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from epochal.loggers.base import TrackedRun, TrackerLogger

HEADER = ["step", "name", "value"]


class CSVLogger(TrackerLogger):
    tracker = "csv"

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None
        self.file = None
        self.writer = None

    def open(self, info: TrackedRun) -> None:
        self.path = info.dir / "metrics.csv"
        if info.start_step > 0 and self.path.exists():
            self._truncate(info.start_step + 1)
        else:
            self.path.write_text(",".join(HEADER) + "\n")
        self._reopen()

    def _reopen(self) -> None:
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)

    def _truncate(self, first_dropped: int) -> None:
        """Keep the header and the rows of steps before ``first_dropped``; a row cut short by a kill goes too."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [row for row in rows[1:] if len(row) == len(HEADER) and row[0].isdigit() and int(row[0]) < first_dropped]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows([HEADER, *kept])

    def write(self, step: int, values: dict[str, float]) -> None:
        self.writer.writerows([step, name, repr(float(value))] for name, value in values.items())

    def rewind(self, step: int) -> None:
        self.file.close()
        self._truncate(step)
        self._reopen()

    def flush(self) -> None:
        self.file.flush()

    def close(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("steps") or 0)
        self.write(step, {f"summary/{key}": value for key, value in summary.items()
                          if isinstance(value, (int, float)) and not isinstance(value, bool)
                          and key not in ("steps", "epochs")})
        self.file.close()
