"""`pooled_driver`: the asyncpg connection under one of the engine's pooled connections, for the hot statements
whose SQLAlchemy execution (compile-cache lookup, execution context, cursor, result) costs more CPU than the
statement itself."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine


@contextlib.asynccontextmanager
async def pooled_driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """Outside a transaction each statement commits on its own (no BEGIN or COMMIT round trips).

    The driver's errors never pass through SQLAlchemy, so it cannot tell a broken connection: one whose statement
    failed other than by a Postgres error (cut off, cancelled mid-statement) is not pooled again."""
    # The pool's connection itself, not a `Connection` around it: its checkout and checkin were ~30 % of a
    # create's CPU. Returning it does no I/O (no SQLAlchemy transaction was begun on it), so it needs no greenlet.
    pooled = await engine.raw_connection()
    try:
        driver = pooled.driver_connection
        assert driver is not None
        yield driver
    except asyncpg.PostgresError:
        raise  # the statement failed and its transaction was rolled back: the connection is still good
    except BaseException:
        pooled.invalidate()
        raise
    finally:
        pooled.close()
