"""The run-folder lock: at most one process writes a run folder at a time.

An OS lock (``flock``) on ``<run>/.lock``, taken without waiting and held until
``release`` or until the process ends: the kernel drops it when the process
dies, however it dies, so a lock is never stale and there is no pid file to
trust. The file holds ``<pid> <host>`` of the holder, which is what a refused
process reports. ``release`` removes the file while still holding the lock; a
process that opened the old file just before that notices (the name now points
at another file, or at none) and starts over, so two processes never both hold
"the" lock.

Imports nothing heavy (no torch): tests start many processes on this code alone.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from epochal.errors import EpochalError
from epochal.io import WriteError, rewrite_in_place

LOCK_NAME = ".lock"
# How long a refused process waits for a fresh holder to write its pid and host:
# the holder writes them right after taking the lock, so this is only ever a race.
_HOLDER_WAIT_S = 3.0


class LockHeld(EpochalError):
    """Another live process holds the run folder."""


class FolderLock:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now or raise LockHeld naming the holder; never waits for it."""
        if self._fd is not None:
            return
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(self._refusal()) from None
            except OSError as err:
                os.close(fd)
                raise EpochalError(f"{self.path}: cannot lock the run folder ({err.strerror})") from None
            if self._names(fd):
                break
            os.close(fd)  # the previous holder removed this file as we opened it: lock the current one
        self._fd = fd
        try:
            rewrite_in_place(self.path, fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except WriteError:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._names(fd):
                self.path.unlink()
        except OSError:
            pass  # the lock itself goes with the descriptor; a leftover file is harmless
        finally:
            os.close(fd)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise EpochalError(f"{self.path}: cannot create the run-folder lock ({err.strerror})") from None

    def _names(self, fd: int) -> bool:
        """Whether the lock's path still names the file open as ``fd``."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def holder(self) -> tuple[int, str] | None:
        """(pid, host) written by the holder, or None if there is none to read."""
        deadline = time.monotonic() + _HOLDER_WAIT_S
        while True:
            try:
                pid, host = self.path.read_text().split()
                return int(pid), host
            except FileNotFoundError:
                return None
            except (OSError, ValueError, UnicodeDecodeError):
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.01)

    def _refusal(self) -> str:
        holder = self.holder()
        who = f"process {holder[0]} on {holder[1]}" if holder else "another process"
        return f"{self.folder}: in use by {who} (lock {self.path}); wait for it or stop it"


def held(folder: str | Path) -> bool:
    """Whether a live process holds the run folder's lock; reads only (a shared probe, released at once)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: nobody holds it (the holder removes it on release)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock, if it got one
    return False

