"""One bound for every short Valkey command (see `ValkeyClients`).

A Valkey that hangs (stopped, not refusing connections) must not hang requests: every command runs under
`bounded()`, and a command that outlives it raises valkey's own `TimeoutError`, so callers handle it exactly
like a refused connection (`VALKEY_ERRORS`, 503 `VALKEY_UNAVAILABLE` where Valkey is required)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from valkey.exceptions import TimeoutError as ValkeyTimeoutError

COMMAND_TIMEOUT = 2.0


def set_command_timeout(seconds: float) -> None:
    global COMMAND_TIMEOUT
    COMMAND_TIMEOUT = seconds


class bounded:
    """`asyncio.timeout` (a timer, not a task) of `COMMAND_TIMEOUT` plus `extra` seconds (a blocking command's
    own wait), raising valkey's `TimeoutError`."""

    __slots__ = ("_timeout",)

    def __init__(self, extra: float = 0.0) -> None:
        self._timeout = asyncio.timeout(COMMAND_TIMEOUT + extra)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError as timeout:
            raise ValkeyTimeoutError(f"Valkey did not answer within {COMMAND_TIMEOUT} s") from timeout
