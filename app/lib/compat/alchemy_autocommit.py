"""Request-scoped database sessions: Advanced-Alchemy's autocommit, without the work for requests that never
used the database (reads Advanced-Alchemy's private scope-state helpers)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from advanced_alchemy.extensions.litestar._utils import delete_aa_scope_state, get_aa_scope_state
from advanced_alchemy.extensions.litestar.plugins.init.config.common import SESSION_TERMINUS_ASGI_EVENTS
from litestar.constants import HTTP_RESPONSE_START
from litestar.types import Message, Scope
from sqlalchemy.ext.asyncio import AsyncSession

from app.lib.compat import require_tested

logger = logging.getLogger(__name__)


def lazy_autocommit_handler(session_scope_key: str) -> Callable[[Message, Scope], Coroutine[Any, Any, None]]:
    """Advanced-Alchemy's autocommit, minus the work when the request never touched the database.

    A request served from the cache holds a session that never began a transaction; committing and
    closing it anyway costs more than the whole cache read (measured: ~190 µs of ~470 µs)."""
    require_tested("advanced-alchemy", __name__)

    async def handler(message: Message, scope: Scope) -> None:
        session = cast("AsyncSession | None", get_aa_scope_state(scope, session_scope_key))
        if session is None:
            return
        terminus = message["type"] in SESSION_TERMINUS_ASGI_EVENTS
        if not session.in_transaction():
            if terminus:
                delete_aa_scope_state(scope, session_scope_key)
            return
        try:
            if message["type"] == HTTP_RESPONSE_START:
                if 200 <= message["status"] < 300:
                    await session.commit()
                else:
                    await session.rollback()
        except Exception:
            logger.debug("session commit/rollback failed during cleanup", exc_info=True)
        finally:
            if terminus:
                try:
                    await session.close()
                except Exception:
                    logger.debug("session close failed during cleanup", exc_info=True)
                delete_aa_scope_state(scope, session_scope_key)

    return handler
