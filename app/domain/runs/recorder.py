"""`EventRecorder`: a run's events go to the session's Valkey Stream (live, ordered, ids) and then, all
but `partial`, to Postgres (durable, for /messages, fork and replay after Valkey loses the stream).

Two stages so a slow database never delays the live stream; each stage writes in batches, so a burst
costs one round trip per batch rather than per event."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db.models import SessionEvent
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import EventLog, parse_entry_id

logger = logging.getLogger(__name__)

NON_DURABLE = frozenset({"partial"})
MAX_BATCH = 500
# Events not yet in Postgres beyond which the agent waits: a fast agent is slowed to what the stores take,
# so a run's end (final status, `done`) never waits for a long backlog to drain.
MAX_PENDING = 2000


def stream_fields(event: str, data: dict[str, Any] | bytes, run_id: UUID | str) -> dict[str, str | bytes]:
    payload = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return {"e": event, "d": payload, "r": str(run_id)}


async def persist_events(
    alchemy: SQLAlchemyAsyncConfig, session_id: UUID, rows: list[tuple[str, str, bytes, UUID]]
) -> None:
    """Inserts (stream id, event, data JSON, run id) rows; replays of the same id are ignored."""
    durable = [r for r in rows if r[1] not in NON_DURABLE]
    if not durable:
        return
    now = datetime.now(UTC)
    values = []
    for entry_id, event, data, run_id in durable:
        ms, seq = parse_entry_id(entry_id)
        values.append(
            {
                "session_id": session_id,
                "run_id": run_id,
                "stream_ms": ms,
                "stream_seq": seq,
                "event": event,
                "data": msgspec.json.decode(data),
                "created_at": now,
                "updated_at": now,
            }
        )
    stmt = pg_insert(SessionEvent).on_conflict_do_nothing(index_elements=["session_id", "stream_ms", "stream_seq"])
    async with alchemy.get_session() as db:
        await db.execute(stmt, values)
        await db.commit()


class EventRecorder:
    def __init__(
        self, events: EventLog, alchemy: SQLAlchemyAsyncConfig, *, session_id: UUID, run_id: UUID, stream_key: str
    ) -> None:
        self._events = events
        self._alchemy = alchemy
        self.session_id = session_id
        self.run_id = run_id
        self.stream_key = stream_key
        self._to_stream: list[tuple[str, bytes]] = []
        self._to_db: list[tuple[str, str, bytes, UUID]] = []
        self._stream_wakeup = asyncio.Event()
        self._db_wakeup = asyncio.Event()
        self._stream_idle = asyncio.Event()
        self._db_idle = asyncio.Event()
        self._stream_idle.set()
        self._db_idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._tasks = [
            asyncio.create_task(self._stream_writer(), name=f"stream-writer-{run_id}"),
            asyncio.create_task(self._db_writer(), name=f"db-writer-{run_id}"),
        ]

    @property
    def pending(self) -> int:
        return len(self._to_stream) + len(self._to_db)

    async def add(self, event: str, data: dict[str, Any]) -> None:
        """Queues an event for the stream (then Postgres); waits while the backlog is full."""
        while self.pending >= MAX_PENDING:
            self._room.clear()
            await self._room.wait()
        self.add_now(event, data)

    def add_now(self, event: str, data: dict[str, Any]) -> None:
        """Queues an event without waiting for room (a run's last few events)."""
        self._to_stream.append((event, msgspec.json.encode(data)))
        self._stream_idle.clear()
        self._stream_wakeup.set()

    def queue_for_database(self, entry_id: str, event: str, data: bytes) -> None:
        """Queues an entry that reached the stream by another path (e.g. `done`) for Postgres."""
        self._to_db.append((entry_id, event, data, self.run_id))
        self._db_idle.clear()
        self._db_wakeup.set()

    async def drain(self, timeout: float = 30.0) -> None:
        """Waits until every event added so far is in the stream and in Postgres."""
        try:
            async with asyncio.timeout(timeout):
                while self._to_stream or not self._stream_idle.is_set():
                    await self._stream_idle.wait()
                while self._to_db or not self._db_idle.is_set():
                    await self._db_idle.wait()
        except TimeoutError:
            logger.error("run %s: event writers did not drain within %ss", self.run_id, timeout)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stream_writer(self) -> None:
        delay = 0.05
        while True:
            await self._stream_wakeup.wait()
            self._stream_wakeup.clear()
            while self._to_stream:
                batch = self._to_stream[:MAX_BATCH]
                try:
                    ids = await self._events.append_many(
                        self.stream_key, [stream_fields(ev, data, self.run_id) for ev, data in batch]
                    )
                except VALKEY_ERRORS:
                    logger.warning("run %s: Valkey unavailable, retrying event append", self.run_id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                del self._to_stream[: len(batch)]
                self._to_db.extend((i, ev, data, self.run_id) for i, (ev, data) in zip(ids, batch, strict=True))
                self._db_idle.clear()
                self._db_wakeup.set()
            self._stream_idle.set()

    async def _db_writer(self) -> None:
        delay = 0.1
        while True:
            await self._db_wakeup.wait()
            self._db_wakeup.clear()
            while self._to_db:
                batch = self._to_db[:MAX_BATCH]
                try:
                    await persist_events(self._alchemy, self.session_id, batch)
                except Exception:
                    logger.warning("run %s: could not persist events, retrying", self.run_id, exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.1
                del self._to_db[: len(batch)]
                if self.pending < MAX_PENDING:
                    self._room.set()
            self._db_idle.set()
