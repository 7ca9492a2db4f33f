"""The one way epochal writes a file: it is either the old file or the new one, never half of either.

``atomic_write_bytes`` writes a temporary file next to the target, fsyncs it,
renames it over the target and fsyncs the folder, so a kill or a power cut at
any moment leaves a complete file behind. Every file a run writes goes through
here (the run-folder lock, whose file must keep its inode, through
``rewrite_in_place``); history.jsonl appends are the one exception, and
``truncate`` of the history comes back through here.

A failed write removes its temporary file and raises ``WriteError``: one line
naming the file and the reason, which the CLI prints without a traceback.

This module imports neither torch nor anything else heavy: the lock code uses it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

from epochal.errors import EpochalError

# Test hook, documented for external fault-injection harnesses: seconds to sleep
# after each written chunk, so a test can kill the process in the middle of a write.
WRITE_DELAY_ENV = "EPOCHAL_TEST_WRITE_DELAY"
# Chunk size of a write: the unit the delay hook pauses between.
_CHUNK = 1 << 20
# Temporary files are named ``.<target>.tmp-<pid>``: hidden, next to their target
# (a rename never crosses file systems), and recognisable for clean-up.
TEMP_MARK = ".tmp-"


class WriteError(EpochalError):
    """A file could not be written (disk full, no permission, ...); the previous version is intact."""

    def __init__(self, path: Path, err: OSError):
        self.path, self.errno, self.strerror = path, err.errno, err.strerror or str(err)
        super().__init__(f"{path}: cannot write ({self.strerror})")


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files killed writes left in ``folder`` (never a complete file); the caller
    holds the folder's lock, so no other process is writing them."""
    for stale in Path(folder).glob(f".*{TEMP_MARK}*"):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: the folder entry is data too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, f: BinaryIO, data: bytes) -> None:
    """The one place where bytes reach a file; fault-injection tests patch this (``path`` is the target)."""
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    for start in range(0, len(data), _CHUNK):
        f.write(data[start : start + _CHUNK])
        if delay:
            f.flush()
            time.sleep(delay)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """temp file + fsync + rename + folder fsync; WriteError (old file intact, no temp left) on failure."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            _write(path, f, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_unseen(path: Path, data: bytes) -> None:
    """A file inside a folder no reader sees yet (renamed into place whole once complete): written and
    fsynced in place, since the folder's rename is what makes it appear."""
    try:
        with open(path, "wb") as f:
            _write(path, f, data)
        fsync_dir(path.parent)
    except OSError as err:
        raise WriteError(path, err) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def rewrite_in_place(path: Path, fd: int, data: bytes) -> None:
    """Replace the whole content of the open file ``fd`` (a lock file must keep its inode, so no rename)."""
    try:
        with os.fdopen(os.dup(fd), "r+b") as f:
            f.truncate(0)
            _write(path, f, data)
    except OSError as err:
        raise WriteError(path, err) from None
