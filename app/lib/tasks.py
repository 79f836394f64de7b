"""Stopping background tasks: one way, used everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancels each task and waits for it to end, without raising what it raised.

    `asyncio.wait` (not `await task` under `suppress(CancelledError)`) so that a cancellation of the *caller*
    still propagates; the tasks' own exceptions are retrieved, so none is reported as never retrieved."""
    await cancel_all(t for t in tasks if t is not None)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()
