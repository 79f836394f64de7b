"""`RunReaper`: finds runs whose owner died (lease gone while Postgres says `running`) and ends them:
session `error`, then `error {code: RUN_LOST}` and `done {reason: error}` on the event stream.

Every instance runs one; the session lock and a fresh read make a double reap harmless. A lease that
is missing only briefly (Valkey flushed: the live owner re-takes it on its next renewal) is spared by
waiting one renewal interval before reaping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import select

from app.config.settings import Settings
from app.db.models import AgentSession
from app.domain.runs.lease import LeaseValue, encode_lease
from app.domain.runs.recorder import persist_events, stream_fields
from app.domain.sessions.keys import active_key, events_key
from app.domain.sessions.services import SessionInfra, SessionService
from app.lib.valkey.errors import VALKEY_ERRORS

logger = logging.getLogger(__name__)

RUN_LOST = {"code": "RUN_LOST", "message": "The instance running this session stopped; the run was lost."}


async def append_run_lost(
    infra: SessionInfra, alchemy: SQLAlchemyAsyncConfig, session_id: UUID, run_id: UUID, *, lease_token: bytes | None
) -> None:
    """Appends `error RUN_LOST` and `done {error}` for `run_id` to the stream and to Postgres.
    With `lease_token`, the `done` goes out in the same step that releases that (reaper's) lease."""
    error_data = msgspec.json.encode(RUN_LOST)
    done_data = msgspec.json.encode({"reason": "error"})
    stream = events_key(session_id)
    (error_id,) = await infra.events.append_many(stream, [stream_fields("error", error_data, run_id)])
    if lease_token is not None:
        _, done_id = await infra.lease.release_with_entry(
            active_key(session_id), lease_token, stream, stream_fields("done", done_data, run_id), 3600
        )
    else:
        (done_id,) = await infra.events.append_many(stream, [stream_fields("done", done_data, run_id)])
    await persist_events(
        alchemy, session_id, [(error_id, "error", error_data, run_id), (done_id, "done", done_data, run_id)]
    )


class RunReaper:
    def __init__(self, settings: Settings, infra: SessionInfra, alchemy: SQLAlchemyAsyncConfig) -> None:
        self.settings = settings
        self.infra = infra
        self.alchemy = alchemy
        self._missing_since: dict[UUID, float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def grace(self) -> float:
        return self.settings.runs.lease_renew_interval + 1.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="run-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        interval = self.settings.runs.reaper_interval
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311 - jitter only
            try:
                await self.sweep()
            except Exception:
                logger.debug("reaper sweep failed", exc_info=True)

    async def sweep(self) -> list[UUID]:
        """One pass; returns the sessions reaped."""
        async with self.alchemy.get_session() as db:
            rows = (
                await db.execute(
                    select(AgentSession.id, AgentSession.active_run_id).where(
                        AgentSession.status == "running", AgentSession.active_run_id.is_not(None)
                    )
                )
            ).all()
        if not rows:
            self._missing_since.clear()
            return []
        leases = await self.infra.lease.get_many([active_key(sid) for sid, _ in rows])
        now = time.monotonic()
        reaped: list[UUID] = []
        seen: set[UUID] = set()
        for (session_id, run_id), lease in zip(rows, leases, strict=True):
            seen.add(session_id)
            if run_id is None:
                continue
            if lease is not None:
                self._missing_since.pop(session_id, None)
                continue
            first = self._missing_since.setdefault(session_id, now)
            if now - first >= self.grace and await self.reap(session_id, run_id):
                reaped.append(session_id)
                self._missing_since.pop(session_id, None)
        for gone in set(self._missing_since) - seen:
            del self._missing_since[gone]
        return reaped

    async def reap(self, session_id: UUID, run_id: UUID) -> bool:
        """Takes the lease itself (so no run starts meanwhile), marks the session `error`, then ends the
        lost run's stream while releasing that lease."""
        token = encode_lease(
            LeaseValue(
                run_id=run_id, instance_id=f"reaper:{self.settings.app.instance_id}", started_at=datetime.now(UTC)
            )
        )
        try:
            if not await self.infra.lease.acquire(active_key(session_id), token):
                return False
        except VALKEY_ERRORS:
            return False
        try:
            async with self.alchemy.get_session() as db:
                service = SessionService(session=db).bind(self.infra)
                row = await db.get(AgentSession, session_id)
                if row is None or row.status != "running" or row.active_run_id != run_id:
                    await self.infra.lease.release(active_key(session_id), token)
                    return False

                def mark_lost(r: AgentSession) -> None:
                    r.status = "error"
                    r.active_run_id = None
                    r.active_instance_id = None
                    r.active_started_at = None

                await service.update_fenced(session_id, row.owner_key_id, mark_lost)
            await append_run_lost(self.infra, self.alchemy, session_id, run_id, lease_token=token)
            logger.warning("reaped lost run %s of session %s", run_id, session_id)
            return True
        except BaseException:
            with contextlib.suppress(Exception):
                await self.infra.lease.release(active_key(session_id), token)
            raise
