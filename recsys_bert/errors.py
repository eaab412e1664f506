"""The project's own error for bad input: scripts print its message on one line and exit non-zero."""

from __future__ import annotations


class InputError(Exception):
    """Input that can't be used (a file, a config, a model folder); the message names file, line and field."""
