"""`EventFollower`: turns a session's event stream into SSE messages, from any instance.

Replays what is after the client's last id, then follows live (XREAD BLOCK) until `done`; a `: ping`
comment goes out after every `SSE_PING_INTERVAL` seconds of silence. If Valkey lost the stream, the
run's durable events are replayed from Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import and_, or_, select

from app.db.models import AgentSession, SessionEvent
from app.domain.sessions.keys import active_key, events_key
from app.domain.sessions.services import SessionInfra
from app.lib import metrics
from app.lib.problems import is_database_unavailable, is_valkey_unavailable
from app.lib.sse import SSEFrame
from app.lib.valkey.event_log import LogEntry, parse_entry_id

logger = logging.getLogger(__name__)

# How long a follower waits out an unreachable Valkey or Postgres before giving up on the stream.
MAX_OUTAGE_SECONDS = 30.0
OUTAGE_RETRY_SECONDS = 0.25


class EventFollower:
    def __init__(self, infra: SessionInfra, alchemy: SQLAlchemyAsyncConfig, ping_interval: float) -> None:
        self.infra = infra
        self.alchemy = alchemy
        self.ping_ms = max(1, int(ping_interval * 1000))
        # Set when the instance shuts down: streams end where they are (no `done`: the run goes on elsewhere
        # or has ended), and clients rejoin another instance with Last-Event-ID.
        self.closing = asyncio.Event()

    def close(self) -> None:
        self.closing.set()

    async def _read(self, key: str, last: str, block_ms: int | None) -> list[LogEntry] | None:
        """The next entries after `last`. Once the follower is closing a read does not block: what is already
        there is still delivered (a drained run's `done`), and None means "nothing more, end the stream"."""
        if block_ms is None:
            return await self.infra.events.read_after(key, last, count=500)
        if self.closing.is_set():
            return await self.infra.events.read_after(key, last, count=500) or None
        read = asyncio.ensure_future(self.infra.events.read_after(key, last, count=500, block_ms=block_ms))
        closed = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((read, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Closing, or the client went away (this task is cancelled): the read must not outlive us.
            closed.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await read
        if read.cancelled():
            return await self.infra.events.read_after(key, last, count=500) or None
        return read.result()

    async def follow(
        self, session_id: UUID, after: str, *, run_id: UUID | None = None
    ) -> AsyncIterator[list[SSEFrame] | None]:
        """Batches of frames in stream order, ending with the one holding `done`; None means "ping now"."""
        metrics.stream_followers.inc()
        try:
            async for batch in self._follow(session_id, after, run_id):
                yield batch
        finally:
            metrics.stream_followers.dec()

    async def _follow(self, session_id: UUID, after: str, run_id: UUID | None) -> AsyncIterator[list[SSEFrame] | None]:
        key = events_key(session_id)
        last = after
        if run_id is not None and not await self.infra.events.exists(key):
            # Valkey lost the stream (flushed or restarted): replay the durable events from Postgres.
            replayed = await self._replay_from_db(session_id, run_id, after)
            if replayed:
                yield replayed
                last = replayed[-1].id
                if replayed[-1].event == "done":
                    return
            if await self.infra.lease.get(active_key(session_id)) is None:
                return
        outage_since: float | None = None
        # The first look does not block: a client rejoining after `done` (an EventSource reconnects on its own)
        # gets an empty stream at once instead of waiting out a blocking read.
        block_ms: int | None = None
        while True:
            try:
                closing = self.closing.is_set()
                read = await self._read(key, last, block_ms)
                if read is None:
                    return  # this instance is shutting down
                entries = read
                closing = closing or self.closing.is_set()
                over = not entries and await self._run_is_over(session_id)
                if over:
                    # One last non-blocking look: `done` may have landed after the read ended.
                    entries = await self.infra.events.read_after(key, last, count=500)
            except Exception as exc:
                # Valkey or Postgres unreachable for a moment: the run goes on (its writers retry), so the
                # stream stays open with pings and reads on when they are back, instead of breaking mid-body.
                if not (is_valkey_unavailable(exc) or is_database_unavailable(exc)):
                    raise
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > MAX_OUTAGE_SECONDS:
                    raise
                logger.warning("event stream of %s: %s, retrying", session_id, type(exc).__name__)
                await asyncio.sleep(OUTAGE_RETRY_SECONDS)
                yield None
                continue
            outage_since = None
            if not entries:
                if over:
                    return
                if block_ms is not None:
                    yield None  # a blocking read's worth of silence: ping
                block_ms = self.ping_ms
                continue
            batch: list[SSEFrame] = []
            for entry in entries:
                frame = SSEFrame(
                    id=entry.id, event=entry.fields.get("e", b"message").decode(), data=entry.fields.get("d", b"{}")
                )
                batch.append(frame)
                last = entry.id
                if frame.event == "done":
                    yield batch
                    return
            yield batch
            if closing:
                return  # shutting down: what was there is delivered; a run elsewhere goes on without us

    async def _run_is_over(self, session_id: UUID) -> bool:
        if await self.infra.lease.get(active_key(session_id)) is not None:
            return False
        async with self.alchemy.get_session() as db:
            status = (
                await db.execute(select(AgentSession.status).where(AgentSession.id == session_id))
            ).scalar_one_or_none()
        return status != "running"

    async def _replay_from_db(self, session_id: UUID, run_id: UUID, after: str) -> list[SSEFrame]:
        ms, seq = parse_entry_id(after)
        async with self.alchemy.get_session() as db:
            rows = (
                (
                    await db.execute(
                        select(SessionEvent)
                        .where(
                            SessionEvent.session_id == session_id,
                            SessionEvent.run_id == run_id,
                            or_(
                                SessionEvent.stream_ms > ms,
                                and_(SessionEvent.stream_ms == ms, SessionEvent.stream_seq > seq),
                            ),
                        )
                        .order_by(SessionEvent.stream_ms, SessionEvent.stream_seq)
                    )
                )
                .scalars()
                .all()
            )

        return [SSEFrame(id=row.stream_id, event=row.event, data=msgspec.json.encode(row.data)) for row in rows]
