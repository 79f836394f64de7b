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
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        try:
            yield driver
        except asyncpg.PostgresError:
            raise  # the statement failed and its transaction was rolled back: the connection is still good
        except BaseException:
            await conn.invalidate()
            raise
