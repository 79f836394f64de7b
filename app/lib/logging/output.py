"""Where log lines go: stdout, or stderr for CLI commands whose stdout is their output."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

_to_stderr = False


def log_to_stderr() -> None:
    """For CLI commands whose stdout is their output (e.g. `keys create` prints the key on its last line)."""
    global _to_stderr
    _to_stderr = True


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at the time (test runners swap it), or stderr after `log_to_stderr()`."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = log_stream()
        super().emit(record)


def log_stream() -> TextIO:
    return sys.stderr if _to_stderr else sys.stdout
