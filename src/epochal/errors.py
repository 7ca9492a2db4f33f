"""Errors a user can fix. The CLI prints them as one line and exits non-zero, no traceback."""


class EpochalError(Exception):
    """Bad input: the message names what is wrong and what is allowed."""

    exit_code = 1


class ConfigError(EpochalError):
    """An unknown key, a wrong type or an impossible value in a config or on the command line."""

    exit_code = 2


class CheckpointError(EpochalError):
    """A checkpoint that is missing, corrupt, unsafe or does not match the run."""
