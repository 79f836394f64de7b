"""The app's lifespan: what starts when the server starts and stops when it stops, in this order.

Entered after the Valkey plugin's lifespan and left before it (finishing runs still write to Valkey). The
database engine is created on first use and disposed at the very end of this shutdown (see there)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from litestar import Litestar

from app.components import AppComponents
from app.domain.keys.services import ApiKeyService
from app.lib import gc_tuning, migrations
from app.lib.compat import granian_signals
from app.lib.problems import is_database_unavailable
from app.lib.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

IDEMPOTENCY_PURGE_INTERVAL = 600.0
# Backoff of the startup database work while Postgres is down (seconds).
STARTUP_RETRY_MIN = 0.5
STARTUP_RETRY_MAX = 5.0


class AppLifespan:
    def __init__(self, components: AppComponents) -> None:
        self.c = components
        self._tasks: list[asyncio.Task[None]] = []
        # Under Granian, SIGTERM drains first, while the server still serves; elsewhere leaving the lifespan
        # does. Installed now, at app creation: the worker sets its signal handlers before the lifespan starts.
        granian_signals.drain_before_worker_stop(self.drain)

    @contextlib.asynccontextmanager
    async def __call__(self, _app: Litestar) -> AsyncIterator[None]:
        await self.prepare_database()
        await self.start_background_work()
        # Last: what startup built is frozen out of the garbage collector's scans (app.lib.gc_tuning).
        settings = self.c.settings.app
        gc_tuning.tune_after_startup(
            freeze=settings.gc_freeze, thresholds=gc_tuning.parse_thresholds(settings.gc_thresholds)
        )
        try:
            yield
        finally:
            await self.stop_background_work()

    async def start_background_work(self) -> None:
        c = self.c
        await c.run_manager.start_listening()
        c.presence.start()
        c.run_reaper.start()
        self._spawn(self._purge_expired_idempotency_keys(), "idempotency-purge")
        c.webhooks.start()
        c.invalidation_sweeper.start()
        # In the background: readiness never waits for it.
        c.cache_warmer.start()

    async def drain(self) -> None:
        """New runs get 503; running ones get their grace period, then are interrupted and end with `done`;
        then streams following runs elsewhere end (clients rejoin another instance with Last-Event-ID)."""
        await self.c.run_manager.drain()
        self.c.event_follower.close()

    async def stop_background_work(self) -> None:
        c = self.c
        await cancel_and_wait(*self._tasks)
        await c.cache_warmer.stop()
        await c.invalidation_sweeper.stop()
        await c.run_reaper.stop()
        await self.drain()  # at once if SIGTERM already drained (app.lib.compat.granian_signals)
        await c.run_manager.close()
        await c.event_follower.aclose()
        # Last of the runs' part: until here this instance's runs were its own; now others may take over at once.
        await c.presence.stop()
        await c.webhooks.stop()  # after the runs: their final events are in the outbox, any instance sends them
        # Last: Advanced-Alchemy's own lifespan is entered after this one (its plugin registers late), so it
        # disposes the engine *before* this shutdown runs, and everything above checked out connections from a
        # fresh pool that nobody would close (measured: 2 idle connections leaked per stopped instance).
        await c.alchemy.get_engine().dispose()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    # -- startup database work --------------------------------------------------------------------------

    async def prepare_database(self) -> None:
        """Migrations and the bootstrap key. With Postgres down the server starts anyway (live, not ready) and
        retries in the background; `/health/ready` is 503 `starting` until it is done."""
        try:
            await self._prepare_database()
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.warning("Postgres unavailable at startup: serving, not ready; retrying the startup work")
            self._spawn(self._retry_prepare_database(), "startup-database-work")
        else:
            self.c.startup_work.done = True

    async def _prepare_database(self) -> None:
        settings = self.c.settings
        if settings.db.migrate_on_startup:
            await migrations.upgrade(self.c.alchemy)
        if settings.app.api_key:
            async with self.c.alchemy.get_session() as db:
                await ApiKeyService(session=db).ensure_bootstrap(settings.app.api_key)

    async def _retry_prepare_database(self) -> None:
        delay = STARTUP_RETRY_MIN
        while True:
            await asyncio.sleep(delay)
            try:
                await self._prepare_database()
            except Exception as exc:
                if not is_database_unavailable(exc):
                    logger.exception("startup database work failed; not retrying (the instance stays not ready)")
                    return
                delay = min(delay * 2, STARTUP_RETRY_MAX)
            else:
                self.c.startup_work.done = True
                logger.info("startup database work done: ready")
                return

    async def _purge_expired_idempotency_keys(self) -> None:
        while True:
            await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL)
            try:
                await self.c.idempotency_store.purge_expired()
            except Exception:
                logger.debug("idempotency purge failed", exc_info=True)
