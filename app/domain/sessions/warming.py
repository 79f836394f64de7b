"""Cache warming at startup: the most recently active sessions go into the Valkey session cache.

Bounded in count (`CACHE_WARM_COUNT`, 0 disables) and time (`CACHE_WARM_TIMEOUT`), and run in the background,
so it never delays readiness. Entries are written with the cache's set-if-newer script: warming can never put
an older version over a newer one a concurrent writer cached (nor over a deleted session's tombstone).

Only one instance warms at a time: the first to start takes a short marker key; instances starting while it
exists (e.g. every replica of a rolling deploy) skip, since the cache is shared."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Literal

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import Select, func, select

from app.db.models import AgentSession
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.services import to_schema
from app.lib import metrics
from app.lib.tasks import cancel_and_wait
from app.lib.valkey.client import ValkeyClient
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.keys import scoped_key
from app.lib.valkey.timeouts import bounded

logger = logging.getLogger(__name__)

WARM_MARKER_KEY = scoped_key("cache-warm", "marker")
WARM_MARKER_TTL = 60
BATCH = 50


def most_recent_sessions(count: int) -> Select[AgentSession]:
    """Sessions by recency (last run, else last update), newest first; served by `ix_agent_session_recency`."""
    recency = func.coalesce(AgentSession.last_run_at, AgentSession.updated_at)
    return select(AgentSession).order_by(recency.desc(), AgentSession.id.desc()).limit(count)


class CacheWarmer:
    def __init__(
        self,
        cache: SessionCache,
        alchemy: SQLAlchemyAsyncConfig,
        client: ValkeyClient,
        *,
        count: int,
        timeout: float,
        instance_id: str,
    ) -> None:
        self.cache = cache
        self.alchemy = alchemy
        self.client = client
        self.count = count
        self.timeout = timeout
        self.instance_id = instance_id
        self.task: asyncio.Task[int] | None = None

    def start(self) -> None:
        if self.count > 0 and self.timeout > 0:
            self.task = asyncio.create_task(self.run(), name="cache-warming")

    async def stop(self) -> None:
        await cancel_and_wait(self.task)

    async def run(self) -> int:
        """Warms the cache; returns how many sessions it wrote. Never raises (startup must not fail on it)."""
        started = time.monotonic()
        warmed = 0
        try:
            async with asyncio.timeout(self.timeout):
                claim = await self._claim()
                if claim != "claimed":
                    logger.info(
                        "cache warming skipped: %s",
                        "another instance warmed the cache just now" if claim == "taken" else "Valkey unavailable",
                    )
                    return 0
                rows = await self.load()
                warmed = await self.put(rows)
        except TimeoutError:
            logger.warning("cache warming stopped after %.1f s (CACHE_WARM_TIMEOUT)", self.timeout)
        except Exception:
            logger.warning("cache warming failed", exc_info=True)
        else:
            logger.info(
                "cache warmed",
                extra={"sessions": warmed, "duration_ms": round((time.monotonic() - started) * 1000, 1)},
            )
        return warmed

    async def _claim(self) -> Literal["claimed", "taken", "unavailable"]:
        try:
            async with bounded():
                taken = await self.client.set(WARM_MARKER_KEY, self.instance_id, nx=True, ex=WARM_MARKER_TTL)
        except VALKEY_ERRORS:
            return "unavailable"  # no Valkey, no cache to warm
        return "claimed" if taken else "taken"

    async def load(self) -> list[AgentSession]:
        """The `count` most recently active sessions, most recent first."""
        async with self.alchemy.get_session() as db:
            return list((await db.execute(most_recent_sessions(self.count))).scalars())

    async def put(self, rows: Sequence[AgentSession]) -> int:
        """Writes the rows' sessions, set-if-newer, a batch at a time (most recent first)."""
        done = 0
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            await asyncio.gather(
                *(self.cache.put(to_schema(row), row.owner_key_id, after_write=False) for row in batch)
            )
            done += len(batch)
            metrics.cache_warmed.inc(len(batch))
        return done
