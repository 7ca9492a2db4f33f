"""Python warnings on the command line: one console line each, and a line of the run's history.

The library warns with ``warnings.warn`` (a library user filters them with ``warnings.filterwarnings``
as any other). The CLI shows each as ``warning: <message>`` on stderr, not Python's two lines with a
source path, and a run it trains records each in history.jsonl as
``{"event": "warning", "step": ..., "category": ..., "message": ...}``.
"""

from __future__ import annotations

import contextlib
import warnings

TYPE_CHECKING = False  # not typing's: the command line imports this before its signal handlers are in place
if TYPE_CHECKING:
    from typing import Callable, Iterator

_sinks: list[Callable[[str, str], None]] = []  # where a shown warning is also recorded: the run training now


def one_line(message, category, filename, lineno, line=None) -> str:
    """``warning: <message>``; a category other than UserWarning is named, since it says who should act."""
    text = " ".join(str(message).split())
    named = "" if category is UserWarning else f"{category.__name__}: "
    return f"warning: {named}{text}\n"


@contextlib.contextmanager
def console_warnings() -> Iterator[None]:
    """For the life of a command: warnings shown as one line, and recorded by the run that trains."""
    show, format_ = warnings.showwarning, warnings.formatwarning

    def recorded(message, category, filename, lineno, file=None, line=None):
        for sink in list(_sinks):
            sink(category.__name__, str(message))
        show(message, category, filename, lineno, file, line)  # which formats it with one_line

    warnings.showwarning, warnings.formatwarning = recorded, one_line
    try:
        yield
    finally:
        warnings.showwarning, warnings.formatwarning = show, format_


@contextlib.contextmanager
def recording(sink: Callable[[str, str], None]) -> Iterator[None]:
    """While a run trains: each warning the command line shows is also passed to ``sink(category, message)``."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)
