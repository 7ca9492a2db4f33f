"""Preemption signals: a scheduler's SIGTERM/SIGUSR1 or a Ctrl-C ends a run cleanly.

The first SIGTERM, SIGINT or SIGUSR1 is only remembered; the ``Preemption`` policy
turns it into a decision at the next step (save, status ``preempted``, exit 75).
A second SIGINT aborts at once (the CLI exits 130); checkpoints already written stay.
"""

from __future__ import annotations

import signal
import threading

# Exit code of a run stopped by a preemption signal after saving: EX_TEMPFAIL,
# "try again later", which is what a scheduler's requeue should read.
PREEMPTED_EXIT_CODE = 75
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class PreemptionSignals:
    """Installed for the life of a run (a context manager); ``received`` is the first signal, if any."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in PREEMPT_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
