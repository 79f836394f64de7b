"""One bound for every short Valkey command (see `ValkeyClients`). `asyncio.timeout` raises the builtin
TimeoutError, an OSError, so callers' `except VALKEY_ERRORS` already covers it."""

from __future__ import annotations

import asyncio

COMMAND_TIMEOUT = 2.0


def set_command_timeout(seconds: float) -> None:
    global COMMAND_TIMEOUT
    COMMAND_TIMEOUT = seconds


def bounded() -> asyncio.Timeout:
    return asyncio.timeout(COMMAND_TIMEOUT)
