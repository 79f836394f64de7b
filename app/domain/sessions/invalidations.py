"""Bounded staleness under a partial partition: cache writes that did not happen, remembered in Postgres.

An instance that reaches Postgres but not Valkey still commits session writes (PATCH, DELETE, a run's status),
but cannot update the shared cache, so every other instance would keep serving the old version (or a deleted
session) until the entry's TTL, 2 hours. So the write is recorded in `cache_invalidation` (one row per session,
upserted), and every instance runs `InvalidationSweeper`: every `SESSION_CACHE_SWEEP_INTERVAL` seconds (2 by
default) an instance that reaches Valkey takes up to `SESSION_CACHE_SWEEP_BATCH` rows (oldest first), puts each
session's current row from Postgres into the cache (set-if-newer, so a newer version cached meanwhile stays) or
a tombstone when the session is gone, then deletes exactly the rows it handled (a row re-recorded meanwhile has
a newer `created_at` and stays for the next sweep). Instances sweep independently; the work is idempotent.

The bound: an entry is stale for at most one sweep interval (plus the sweep itself) after the write's commit,
as long as some instance reaches both Valkey and Postgres; with a backlog, each instance works off `BATCH` rows
per interval, continuing at once while full batches come back."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from app.db.models import AgentSession, CacheInvalidation
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.services import to_schema
from app.lib.tasks import cancel_and_wait
from app.lib.valkey.errors import VALKEY_ERRORS

logger = logging.getLogger(__name__)


class PendingInvalidations:
    """Records, durably, that a session's cache entry may be stale."""

    def __init__(self, alchemy: SQLAlchemyAsyncConfig) -> None:
        self.alchemy = alchemy

    async def record(self, session_id: UUID) -> None:
        stmt = insert(CacheInvalidation).values(session_id=session_id)
        stmt = stmt.on_conflict_do_update(
            index_elements=[CacheInvalidation.session_id], set_={"created_at": func.now()}
        )
        try:
            async with self.alchemy.get_engine().begin() as conn:
                await conn.execute(stmt)
        except Exception:
            # Postgres unreachable too: the instance is cut off from both, and the write itself could not commit.
            logger.warning("could not record a missed session cache write", exc_info=True)


class InvalidationSweeper:
    def __init__(self, cache: SessionCache, alchemy: SQLAlchemyAsyncConfig, *, interval: float, batch: int) -> None:
        self.cache = cache
        self.alchemy = alchemy
        self.interval = interval
        self.batch = batch
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self.batch > 0:
            self.task = asyncio.create_task(self.run(), name="cache-invalidation-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self.task)

    async def run(self) -> None:
        while True:
            handled = 0
            try:
                handled = await self.sweep()
            except Exception:
                logger.debug("cache invalidation sweep failed; retrying next interval", exc_info=True)
            if handled < self.batch:
                await asyncio.sleep(self.interval)
            else:
                await asyncio.sleep(0)  # a backlog: the next batch at once

    async def sweep(self) -> int:
        """Applies up to `batch` pending invalidations; returns how many. Nothing when Valkey is unreachable."""
        try:
            await self.cache.ping()
        except VALKEY_ERRORS:
            return 0
        engine = self.alchemy.get_engine()
        async with engine.connect() as conn:
            pending = (
                await conn.execute(
                    select(CacheInvalidation.session_id, CacheInvalidation.created_at)
                    .order_by(CacheInvalidation.created_at)
                    .limit(self.batch)
                )
            ).all()
        if not pending:
            return 0
        ids = [row.session_id for row in pending]
        async with self.alchemy.get_session() as db:
            rows = {r.id: r for r in (await db.execute(select(AgentSession).where(AgentSession.id.in_(ids)))).scalars()}
        for session_id in ids:
            row = rows.get(session_id)
            if row is None:
                await self.cache.tombstone_or_raise(session_id)
            else:
                await self.cache.refresh(to_schema(row), row.owner_key_id)
        async with engine.begin() as conn:
            handled = [(row.session_id, row.created_at) for row in pending]
            await conn.execute(
                delete(CacheInvalidation).where(
                    tuple_(CacheInvalidation.session_id, CacheInvalidation.created_at).in_(handled)
                )
            )
        logger.info("applied missed session cache writes", extra={"sessions": len(pending)})
        return len(pending)
