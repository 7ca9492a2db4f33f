"""The errors of the NumPy reference trainer.

Both are ``ValueError`` (what a NumPy user expects for bad input) and
``EpochalError`` (what the CLI prints as one line, without a traceback).
Every message says what is wrong and what is allowed.
"""

from __future__ import annotations

from epochal.errors import ConfigError, EpochalError


class ScratchValueError(EpochalError, ValueError):
    """A bad argument at run time: a gradient of the wrong shape, a NaN, an unknown schedule."""


class ScratchConfigError(ConfigError, ValueError):
    """An impossible value in a ``ScratchMLPConfig``; the message names the field."""
