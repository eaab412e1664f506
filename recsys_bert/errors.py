"""The project's own error for bad input: scripts print its message on one line and exit non-zero."""

from __future__ import annotations


class InputError(Exception):
    """Input that can't be used (a file, a config, a model folder); the message names file, line and field."""


class Interrupted(Exception):
    """Training stopped by a signal (SIGTERM, Ctrl-C) after saving a checkpoint; exits with 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
