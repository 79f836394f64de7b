"""`EventRecorder`: a run's events go to the session's Valkey Stream (live, ordered, ids) and then, all
but `partial`, to Postgres (durable, for /messages, fork and replay after Valkey loses the stream).

Two stages so a slow database never delays the live stream. The stream stage is per run (one pipelined XADD
per batch); the Postgres stage is one `EventPersister` per instance that writes every run's pending events in
one INSERT per batch: a thousand live runs cost a few transactions a second, not thousands, and no run
holds a database connection while its agent works."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from app.db.models import AgentSession, SessionEvent
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import EventLog, parse_entry_id

logger = logging.getLogger(__name__)

NON_DURABLE = frozenset({"partial"})
MAX_BATCH = 500
# Rows per persister INSERT: every run's pending rows, so a thousand live runs (10,000 events a second) fit in a
# few INSERTs a second; a smaller cap let the backlog (and the memory it holds) grow under load.
PERSIST_BATCH = 2000
# Events not yet in Postgres beyond which the agent waits: a fast agent is slowed to what the stores take,
# so a run's end (final status, `done`) never waits for a long backlog to drain.
MAX_PENDING = 2000


def stream_fields(event: str, data: dict[str, Any] | bytes, run_id: UUID | str) -> dict[str, str | bytes]:
    payload = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return {"e": event, "d": payload, "r": str(run_id)}


Row = tuple[str, str, bytes, UUID]  # (stream id, event, data JSON, run id)


def _values(session_id: UUID, rows: list[Row], now: datetime) -> list[dict[str, Any]]:
    values = []
    for entry_id, event, data, run_id in rows:
        if event in NON_DURABLE:
            continue
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
    return values


# On the table, not the mapped class: a Core executemany, without the ORM's bulk-insert bookkeeping per row (a
# sixth of an instance's CPU at a few thousand events a second).
_INSERT = pg_insert(cast(Table, SessionEvent.__table__)).on_conflict_do_nothing(
    index_elements=["session_id", "stream_ms", "stream_seq"]
)
# Under load the persister's INSERTs are at least this far apart, so each carries many runs' events (fewer
# transactions); a lone event is not held back (the last INSERT is long past).
MIN_INSERT_INTERVAL = 0.02


async def persist_events(alchemy: SQLAlchemyAsyncConfig, session_id: UUID, rows: list[Row]) -> None:
    """Inserts one session's rows; replays of the same id are ignored."""
    values = _values(session_id, rows, datetime.now(UTC))
    if values:
        async with alchemy.get_session() as db:
            await db.execute(_INSERT, values)
            await db.commit()


class EventPersister:
    """Writes the pending events of every recorder on this instance to Postgres, many runs per INSERT."""

    def __init__(self, alchemy: SQLAlchemyAsyncConfig) -> None:
        self.alchemy = alchemy
        self._dirty: dict[int, EventRecorder] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def mark(self, recorder: EventRecorder) -> None:
        self._dirty[id(recorder)] = recorder
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="event-persister")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        delay = 0.1
        last_insert = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._dirty:
                since = loop.time() - last_insert
                if since < MIN_INSERT_INTERVAL:
                    await asyncio.sleep(MIN_INSERT_INTERVAL - since)
                last_insert = loop.time()
                taken: list[tuple[EventRecorder, int]] = []
                values: list[dict[str, Any]] = []
                now = datetime.now(UTC)
                for recorder in list(self._dirty.values()):
                    if len(values) >= PERSIST_BATCH:
                        break
                    rows = recorder.to_db[: PERSIST_BATCH - len(values)]
                    taken.append((recorder, len(rows)))
                    values.extend(_values(recorder.session_id, rows, now))
                try:
                    await self._insert(values)
                except Exception:
                    logger.warning("could not persist events, retrying", exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.1
                for recorder, count in taken:
                    recorder.rows_written(count)
                    if not recorder.to_db:
                        self._dirty.pop(id(recorder), None)

    async def _insert(self, values: list[dict[str, Any]]) -> None:
        if not values:
            return
        try:
            async with self.alchemy.get_session() as db:
                await db.execute(_INSERT, values)
                await db.commit()
        except IntegrityError:
            # A session deleted just after its run ended (its last rows have nowhere to go): drop those rows,
            # keep everyone else's.
            sessions = {v["session_id"] for v in values}
            async with self.alchemy.get_session() as db:
                alive = set((await db.execute(select(AgentSession.id).where(AgentSession.id.in_(sessions)))).scalars())
                kept = [v for v in values if v["session_id"] in alive]
                if kept:
                    await db.execute(_INSERT, kept)
                await db.commit()


class EventRecorder:
    def __init__(
        self, events: EventLog, persister: EventPersister, *, session_id: UUID, run_id: UUID, stream_key: str
    ) -> None:
        self._events = events
        self._persister = persister
        self.session_id = session_id
        self.run_id = run_id
        self.stream_key = stream_key
        self._to_stream: list[tuple[str, bytes]] = []
        self.to_db: list[Row] = []
        self._stream_wakeup = asyncio.Event()
        self._stream_idle = asyncio.Event()
        self._db_idle = asyncio.Event()
        self._stream_idle.set()
        self._db_idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._tasks = [asyncio.create_task(self._stream_writer(), name=f"stream-writer-{run_id}")]

    @property
    def pending(self) -> int:
        return len(self._to_stream) + len(self.to_db)

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
        self._queue_rows([(entry_id, event, data, self.run_id)])

    def _queue_rows(self, rows: list[Row]) -> None:
        self.to_db.extend(rows)
        self._db_idle.clear()
        self._persister.mark(self)

    def rows_written(self, count: int) -> None:
        """The persister wrote the first `count` queued rows."""
        del self.to_db[:count]
        if self.pending < MAX_PENDING:
            self._room.set()
        if not self.to_db:
            self._db_idle.set()

    async def wait_streamed(self, timeout: float = 30.0) -> None:
        """Waits until every event added so far is in the stream (Postgres may still be behind)."""
        try:
            async with asyncio.timeout(timeout):
                while self._to_stream or not self._stream_idle.is_set():
                    await self._stream_idle.wait()
        except TimeoutError:
            logger.error("run %s: stream writer did not catch up within %ss", self.run_id, timeout)

    async def wait_persisted(self, timeout: float = 30.0) -> None:
        """Waits until every event added so far is in the stream and in Postgres."""
        try:
            async with asyncio.timeout(timeout):
                while self._to_stream or not self._stream_idle.is_set():
                    await self._stream_idle.wait()
                while self.to_db or not self._db_idle.is_set():
                    await self._db_idle.wait()
        except TimeoutError:
            logger.error("run %s: event writers did not catch up within %ss", self.run_id, timeout)

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
                self._queue_rows([(i, ev, data, self.run_id) for i, (ev, data) in zip(ids, batch, strict=True)])
            self._stream_idle.set()
