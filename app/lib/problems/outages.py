"""Is this error an outage of Postgres or Valkey (answered 503, retried) rather than a bug?"""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import exc as sa_exc

from app.lib.valkey.errors import VALKEY_OUTAGE_ERRORS


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_DB_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    sa_exc.DisconnectionError,
    sa_exc.InterfaceError,
    sa_exc.OperationalError,
    # The connection pool is exhausted (every connection checked out past `pool_timeout`): busy, not broken.
    sa_exc.TimeoutError,
    ConnectionError,
    asyncio.TimeoutError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    for item in _chain(exc):
        if isinstance(item, _DB_DOWN):
            return True
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
        if isinstance(item, OSError):
            # A bare OSError from the Postgres driver: connection refused, socket gone. Valkey's errors
            # are checked first by the caller.
            return True
    return False


def is_valkey_unavailable(exc: BaseException) -> bool:
    # Valkey's own errors only: a bare OSError may as well be the database's.
    return any(isinstance(item, VALKEY_OUTAGE_ERRORS) for item in _chain(exc))
