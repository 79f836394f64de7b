"""`pooled_driver`: the asyncpg connection under one of the engine's pooled connections, for the hot statements
whose SQLAlchemy execution (compile-cache lookup, execution context, cursor, result) costs more CPU than the
statement itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

# The server went away (restarted, shut down, the socket cut): every connection pooled before is dead too.
_SERVER_GONE = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,  # incl. ConnectionDoesNotExistError: a PostgresError, but the connection is gone
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)


@contextlib.asynccontextmanager
async def pooled_driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """Outside a transaction each statement commits on its own (no BEGIN or COMMIT round trips).

    The driver's errors never pass through SQLAlchemy, so it cannot tell a broken connection; this does what it
    would: a connection whose statement failed other than by a Postgres error about the statement (cut off,
    cancelled mid-statement, the server gone) is not pooled again, and when the server went away the whole pool
    is replaced, so the next requests do not each find another dead connection."""
    # The pool's connection itself, not a `Connection` around it: its checkout and checkin were ~30 % of a
    # create's CPU. Returning it does no I/O (no SQLAlchemy transaction was begun on it), so it needs no greenlet.
    pooled = await engine.raw_connection()
    try:
        driver = pooled.driver_connection
        assert driver is not None
        try:
            yield driver
        except BaseException as exc:
            gone = isinstance(exc, _SERVER_GONE) or driver.is_closed()
            if isinstance(exc, asyncpg.PostgresError) and not gone:
                raise  # the statement failed and its transaction was rolled back: the connection is still good
            pooled.invalidate()
            if gone and not isinstance(exc, asyncio.CancelledError):
                await engine.dispose()
            raise
    finally:
        pooled.close()
