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
import struct
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

from app.db.driver import pooled_driver
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import EventLog, parse_entry_id

logger = logging.getLogger(__name__)

NON_DURABLE = frozenset({"partial"})
# Entries per stream append: one script call each, which Valkey runs to its end before serving anyone else, so it
# stays short (other runs' events wait behind it).
MAX_BATCH = 500
# Rows per Postgres transaction (one COPY): bigger batches mean fewer commits per row. At 1,000 live runs
# (10,000 events a second) a 500-row cap let the persister's backlog, and the instances' memory, grow all
# through the run (measured with `scripts.bench.scale`).
MAX_DB_BATCH = 2000
# Events not yet in Postgres beyond which the agent waits: a fast agent is slowed to what the stores take,
# so a run's end (final status, `done`) never waits for a long backlog to drain.
MAX_PENDING = 2000


# A stream entry's fields: the event's name, its JSON data, its run's id.
STREAM_FIELDS = ("e", "d", "r")


def stream_fields(event: str, data: dict[str, Any] | bytes, run_id: UUID | str) -> dict[str, str | bytes]:
    payload = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return dict(zip(STREAM_FIELDS, (event, payload, str(run_id)), strict=True))


Row = tuple[str, str, bytes, UUID]  # (stream id, event, data JSON, run id)


# A batch goes to Postgres as one binary COPY (the payload built here, row by row, as a few byte strings each):
# no SQL to build or parse per batch, nothing for Postgres to parse but the JSON, and its cheapest path per row
# (no speculative insertion). The ORM bulk insert it replaces cost ~60 µs of Python per row (parameter dicts,
# per-value type processing, a multi-row VALUES text rebuilt and re-prepared for every batch size) and held a
# burst to ~15,000 rows/s; asyncpg's own record encoder still took twice what this does. Rows are written in
# order, so the ids Postgres assigns follow the stream's order too.
_COLUMNS = ("session_id", "run_id", "stream_ms", "stream_seq", "event", "data", "created_at", "updated_at")
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no header extension
_COPY_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary timestamptz: microseconds since then
_pack_ids_and_name_length = struct.Struct(">iqiqi").pack  # stream_ms and stream_seq (int8), the event's length
_pack_jsonb_header = struct.Struct(">iB").pack  # the data's length, jsonb's format version (1)
_pack_uuid_pair = struct.Struct(">hi16si16s").pack  # the row's field count, session_id and run_id (uuid)

# COPY has no ON CONFLICT: a batch it refuses (a replay of ids already stored, after a commit whose reply was
# lost; or a session deleted just after its run ended, whose last rows have nowhere to go) is written again by
# this statement, which ignores the replays, once the rows of deleted sessions are dropped. One statement for
# any batch size (one array per column), so asyncpg's prepared-statement cache serves it.
_INSERT_IGNORING_REPLAYS = (
    "INSERT INTO session_event "
    "(session_id, run_id, stream_ms, stream_seq, event, data, created_at, updated_at) "
    "SELECT s, r, m, q, e, d, $7, $7 FROM unnest("
    "$1::uuid[], $2::uuid[], $3::int8[], $4::int8[], $5::text[], $6::jsonb[]"
    ") AS t(s, r, m, q, e, d) "
    "ON CONFLICT (session_id, stream_ms, stream_seq) DO NOTHING"
)
_ALIVE = "SELECT id FROM agent_session WHERE id = ANY($1::uuid[])"


# Under load the persister's transactions are at least this far apart, so each carries many runs' events; a
# lone event is not held back (the last one is long past).
MIN_INSERT_INTERVAL = 0.02


class EventBatch:
    """The rows of one transaction (one or more sessions'), all but `partial`: as the binary COPY payload,
    built as rows are added, and as the rows themselves, for the rare batch COPY refuses."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.count = 0
        self._parts: list[tuple[UUID, list[Row]]] = []
        self._payload = [_COPY_HEADER]
        elapsed = now - _PG_EPOCH
        micros = (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
        self._stamps = struct.pack(">iq", 8, micros) * 2  # created_at, updated_at
        self._ids: dict[tuple[UUID, UUID], bytes] = {}

    def add(self, session_id: UUID, rows: list[Row]) -> None:
        self._parts.append((session_id, rows))
        payload, stamps, ids = self._payload, self._stamps, self._ids
        for entry_id, event, data, run_id in rows:
            if event in NON_DURABLE:
                continue
            pair = ids.get((session_id, run_id))
            if pair is None:
                pair = _pack_uuid_pair(len(_COLUMNS), 16, session_id.bytes, 16, run_id.bytes)
                ids[(session_id, run_id)] = pair
            ms, seq = parse_entry_id(entry_id)
            name = event.encode()
            payload += (
                pair,
                _pack_ids_and_name_length(8, ms, 8, seq, len(name)),
                name,
                _pack_jsonb_header(len(data) + 1, 1),
                data,
                stamps,
            )
            self.count += 1

    @property
    def session_ids(self) -> set[UUID]:
        return {session_id for session_id, _ in self._parts}

    def copy_payload(self) -> memoryview:
        # A memoryview: asyncpg takes bytes for a file name.
        return memoryview(b"".join([*self._payload, _COPY_TRAILER]))

    def columns(self, sessions: set[UUID]) -> list[list[Any]]:
        """The rows of these sessions, one list per column, for `_INSERT_IGNORING_REPLAYS`."""
        columns: list[list[Any]] = [[], [], [], [], [], []]
        session_ids, run_ids, ms_list, seq_list, events, datas = columns
        for session_id, rows in self._parts:
            if session_id not in sessions:
                continue
            for entry_id, event, data, run_id in rows:
                if event in NON_DURABLE:
                    continue
                ms, seq = parse_entry_id(entry_id)
                session_ids.append(session_id)
                run_ids.append(run_id)
                ms_list.append(ms)
                seq_list.append(seq)
                events.append(event)
                datas.append(data.decode())
        return columns


async def insert_events(alchemy: SQLAlchemyAsyncConfig, batch: EventBatch) -> None:
    """Stores the batch in one transaction, straight on a pooled connection's asyncpg driver; ids already stored
    are ignored, and so are the rows of sessions that no longer exist."""
    if not batch.count:
        return
    async with pooled_driver(alchemy.get_engine()) as driver:
        try:
            async with driver.transaction():
                await driver.copy_to_table(
                    "session_event", source=batch.copy_payload(), columns=_COLUMNS, format="binary"
                )
        except asyncpg.IntegrityConstraintViolationError:
            alive = {row[0] for row in await driver.fetch(_ALIVE, list(batch.session_ids))}
            columns = batch.columns(alive)
            if columns[0]:
                async with driver.transaction():
                    await driver.execute(_INSERT_IGNORING_REPLAYS, *columns, batch.now)


async def persist_events(alchemy: SQLAlchemyAsyncConfig, session_id: UUID, rows: list[Row]) -> None:
    """Stores one session's rows; replays of the same id are ignored."""
    batch = EventBatch(datetime.now(UTC))
    batch.add(session_id, rows)
    await insert_events(alchemy, batch)


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
                batch = EventBatch(datetime.now(UTC))
                size = 0
                for recorder in list(self._dirty.values()):
                    if size >= MAX_DB_BATCH:
                        break
                    rows = recorder.to_db[: MAX_DB_BATCH - size]
                    size += len(rows)
                    taken.append((recorder, len(rows)))
                    batch.add(recorder.session_id, rows)
                try:
                    await insert_events(self.alchemy, batch)
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


class EventRecorder:
    def __init__(
        self, events: EventLog, persister: EventPersister, *, session_id: UUID, run_id: UUID, stream_key: str
    ) -> None:
        self._events = events
        self._persister = persister
        self.session_id = session_id
        self.run_id = run_id
        self.stream_key = stream_key
        self._run_key = str(run_id).encode()  # the `r` field of every entry, encoded once
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
                values: list[bytes] = []
                for ev, data in batch:
                    values += (ev.encode(), data, self._run_key)
                try:
                    ids = await self._events.append_values(self.stream_key, STREAM_FIELDS, values)
                except VALKEY_ERRORS:
                    logger.warning("run %s: Valkey unavailable, retrying event append", self.run_id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                del self._to_stream[: len(batch)]
                self._queue_rows([(i, ev, data, self.run_id) for i, (ev, data) in zip(ids, batch, strict=True)])
            self._stream_idle.set()
