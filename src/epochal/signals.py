"""Preemption signals: a scheduler's SIGTERM/SIGUSR1 or a Ctrl-C ends a run cleanly.

The first SIGTERM, SIGINT or SIGUSR1 is only remembered; the ``Preemption`` policy
turns it into a decision at the next step (save, status ``preempted``, exit 75).
A second SIGINT aborts at once (the CLI exits 130); checkpoints already written stay.

Under torchrun a signal may reach one rank only (or the ranks at different steps), so a
rank only notes it as ``pending``; it counts (``received``) once the ranks have agreed on
it at a log interval (``agree``), and then every rank stops at the same step. A second
SIGINT does not abort there: a Ctrl-C reaches a worker twice (from the terminal, then
forwarded by torchrun), and torchrun kills its workers 30 s after it forwards a signal.
"""

from __future__ import annotations

import os
import signal
import threading

# Exit code of a run stopped by a preemption signal after saving: EX_TEMPFAIL,
# "try again later", which is what a scheduler's requeue should read.
PREEMPTED_EXIT_CODE = 75
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Interrupted(BaseException):
    """A preemption signal while no run is training: before a run folder exists, or between runs.

    Not an Exception, like KeyboardInterrupt: libraries guard optional code with ``except Exception``,
    and one that swallowed it would carry on as if no signal had come. A scheduler's SIGTERM or SIGUSR1
    exits 75 as a preempted run does, so that the job is requeued even when it came during start-up;
    a Ctrl-C exits 130, as an aborted run does.
    """

    def __init__(self, signum: int):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            super().__init__(f"interrupted by {name} while no run was training; nothing was left half-written")
            self.exit_code = 128 + signum
        else:
            super().__init__(f"preempted by {name} while no run was training: nothing to save")
            self.exit_code = PREEMPTED_EXIT_CODE
        self.signum = signum


def install_outside_runs() -> dict[int, object]:
    """Install ``interrupt_outside_runs`` for every preemption signal; returns the handlers it replaced.
    The CLI calls this first thing, before it imports torch (seconds): a signal then is one line, not death."""
    _raised.clear()
    return {sig: signal.signal(sig, interrupt_outside_runs) for sig in PREEMPT_SIGNALS}


def interrupt_outside_runs(signum, frame) -> None:
    """The CLI's handler until a run installs its own: the command ends with one line (``Interrupted``)."""
    if _raised:
        return  # the command is already ending: a second signal must not interrupt its one line
    if _inside_import(frame):
        _defer(signum)
        return
    _raised.append(signum)
    raise Interrupted(signum)


_raised: list[int] = []  # the signal already raised as Interrupted in this command, if any


def ignore_after_the_command() -> None:
    """The command has ended; the interpreter's teardown (torch's, threads') can take a second more. A
    signal then is ignored, so the process still exits with the command's code: the default action (death
    by the signal, 143) would read to a scheduler as a failed job. Ignored, not handled: the interpreter
    puts Python handlers back to the default early in its teardown, SIG_IGN it leaves as it is."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


_deferred: list[int] = []  # a signal that came inside an import and still waits to be handled


def _defer(signum: int) -> None:
    """Hold a signal that came inside an import. An error raised there can be swallowed by C code that
    imports an optional module (torch imports NumPy so), leaving a half-imported module behind. The
    signal is delivered again shortly to whichever handler is installed then, unless a run takes it first."""
    _deferred.append(signum)
    timer = threading.Timer(0.05, _deliver_deferred)
    timer.daemon = True
    timer.start()


def _deliver_deferred() -> None:
    try:
        signum = _deferred.pop()
    except IndexError:
        return  # a run took it (PreemptionSignals.__enter__)
    os.kill(os.getpid(), signum)


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class PreemptionSignals:
    """Installed for the life of a run (a context manager); ``received`` is the first signal, if any."""

    def __init__(self, agreed: bool = False) -> None:
        self.agreed = agreed  # more than one process: a signal waits for agreement (see the module docstring)
        self.received: int | None = None
        self.pending: int | None = None  # the first signal this process got, agreed on or not
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.pending is not None and signum == signal.SIGINT and not self.agreed:
            raise KeyboardInterrupt
        if self.pending is None:
            self.pending = signum
        if self.received is None and not self.agreed:
            self.received = signum

    def flags(self) -> list[float]:
        """One flag per preemption signal: 1.0 for the one this process got; summed over the ranks by ``agree``."""
        return [float(self.pending == sig) for sig in PREEMPT_SIGNALS]

    def agree(self, counts: list[float]) -> None:
        """The ranks' summed ``flags``: a signal any rank got now counts on every rank (SIGTERM named first)."""
        if self.received is None:
            self.received = next((sig for sig, count in zip(PREEMPT_SIGNALS, counts) if count > 0), None)

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in PREEMPT_SIGNALS}
        while _deferred:  # a signal that came while this process was importing, before the run began
            self._handle(_deferred.pop(), None)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
