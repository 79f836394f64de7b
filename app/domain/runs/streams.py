"""`EventFollower`: turns a session's event stream into SSE messages, from any instance.

Replays what is after the client's last id, then follows live (XREAD BLOCK) until `done`; a `: ping`
comment goes out after every `SSE_PING_INTERVAL` seconds of silence. If Valkey lost the stream, the
run's durable events are replayed from Postgres."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar.response import ServerSentEventMessage
from sqlalchemy import and_, or_, select

from app.db.models import AgentSession, SessionEvent
from app.domain.sessions.keys import active_key, events_key
from app.domain.sessions.services import SessionInfra
from app.lib.valkey.event_log import parse_entry_id

logger = logging.getLogger(__name__)

PING = ServerSentEventMessage(comment="ping")

class EventFollower:
    def __init__(self, infra: SessionInfra, alchemy: SQLAlchemyAsyncConfig, ping_interval: float) -> None:
        self.infra = infra
        self.alchemy = alchemy
        self.ping_ms = max(1, int(ping_interval * 1000))

    async def follow(self, session_id: UUID, after: str, *, run_id: UUID | None = None) -> AsyncIterator[ServerSentEventMessage]:
        key = events_key(session_id)
        last = after
        if run_id is not None and not await self.infra.events.exists(key):
            # Valkey lost the stream (flushed or restarted): replay the durable events from Postgres.
            async for message, entry_id, event in self._replay_from_db(session_id, run_id, after):
                yield message
                last = entry_id
                if event == "done":
                    return
            if await self.infra.lease.get(active_key(session_id)) is None:
                return
        while True:
            entries = await self.infra.events.read_after(key, last, count=500, block_ms=self.ping_ms)
            if not entries:
                if await self._run_is_over(session_id):
                    # One last non-blocking look: `done` may have landed after the blocking read ended.
                    entries = await self.infra.events.read_after(key, last, count=500)
                    if not entries:
                        return
                else:
                    yield PING
                    continue
            for entry in entries:
                event = entry.fields.get("e", b"message").decode()
                yield ServerSentEventMessage(data=entry.fields.get("d", b"{}").decode(), event=event, id=entry.id)
                last = entry.id
                if event == "done":
                    return

    async def _run_is_over(self, session_id: UUID) -> bool:
        if await self.infra.lease.get(active_key(session_id)) is not None:
            return False
        async with self.alchemy.get_session() as db:
            status = (await db.execute(select(AgentSession.status).where(AgentSession.id == session_id))).scalar_one_or_none()
        return status != "running"

    async def _replay_from_db(
        self, session_id: UUID, run_id: UUID, after: str
    ) -> AsyncIterator[tuple[ServerSentEventMessage, str, str]]:
        ms, seq = parse_entry_id(after)
        async with self.alchemy.get_session() as db:
            rows = (
                await db.execute(
                    select(SessionEvent)
                    .where(
                        SessionEvent.session_id == session_id,
                        SessionEvent.run_id == run_id,
                        or_(SessionEvent.stream_ms > ms, and_(SessionEvent.stream_ms == ms, SessionEvent.stream_seq > seq)),
                    )
                    .order_by(SessionEvent.stream_ms, SessionEvent.stream_seq)
                )
            ).scalars().all()

        for row in rows:
            yield (
                ServerSentEventMessage(data=msgspec.json.encode(row.data).decode(), event=row.event, id=row.stream_id),
                row.stream_id,
                row.event,
            )
