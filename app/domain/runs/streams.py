"""`EventFollower`: one run's events as SSE frames, from any instance.

A session has one Valkey Stream; each entry names its run (`r`). A follower reads the stream after the
client's last id and keeps only its run's entries, following live (XREAD BLOCK) until that run's `done`. When
the stream no longer has them (Valkey flushed or restarted, or a later run of the session reset the stream),
the run's durable events are replayed from Postgres. A `: ping` comment goes out after every `ping_interval`
seconds without an event of this run (a queued run's stream pings until it starts).

On one Valkey node the live part goes through the instance's `StreamHub` (one blocking reader for every
follower: a follower costs a queue, not a connection); on a cluster each follower does its own XREAD BLOCK."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import and_, or_, select

from app.db.models import AgentSession, SessionEvent
from app.domain.runs.lease_value import decode_lease
from app.domain.runs.store import RunStore, is_ended
from app.domain.sessions.valkey_keys import active_key, events_key
from app.lib import metrics
from app.lib.problems import is_database_unavailable, is_valkey_unavailable
from app.lib.sse import SSEFrame
from app.lib.tasks import cancel_and_wait
from app.lib.valkey.event_log import EventLog, LogEntry, parse_entry_id
from app.lib.valkey.lease import RunLease
from app.lib.valkey.stream_hub import StreamHub, Subscription

logger = logging.getLogger(__name__)

# How long a follower waits out an unreachable Valkey or Postgres before giving up on the stream.
MAX_OUTAGE_SECONDS = 30.0
OUTAGE_RETRY_SECONDS = 0.25
# An ended run whose `done` is not in Postgres yet (its owner stores it right after appending it).
DONE_PERSIST_WAIT = 10.0
READ_COUNT = 500


def _later(a: str, b: str) -> bool:
    return parse_entry_id(a) > parse_entry_id(b)


class EventFollower:
    def __init__(
        self,
        events: EventLog,
        lease: RunLease,
        store: RunStore,
        alchemy: SQLAlchemyAsyncConfig,
        ping_interval: float,
        hub: StreamHub | None = None,
    ) -> None:
        self.events = events
        self.hub = hub
        self.lease = lease
        self.store = store
        self.alchemy = alchemy
        self.ping_interval = ping_interval
        self.ping_ms = max(1, int(ping_interval * 1000))
        # Set when the instance shuts down: streams end where they are (no `done`: the run goes on elsewhere
        # or has ended), and clients rejoin another instance with Last-Event-ID.
        self.closing = asyncio.Event()

    def close(self) -> None:
        self.closing.set()
        if self.hub is not None:
            self.hub.wake_all()  # waiting reads return now and see `closing`

    async def aclose(self) -> None:
        """Stops the shared reader (after `close`: the streams have ended)."""
        self.close()
        if self.hub is not None:
            await self.hub.aclose()

    async def last_event_id(self, session_id: UUID, run_id: UUID) -> str | None:
        """The newest id of this run's events anywhere (the stream, else Postgres): a client's
        `Last-Event-ID` beyond it names no event at all."""
        newest = await self.events.last_id(events_key(session_id))
        async with self.alchemy.get_session() as db:
            row = (
                await db.execute(
                    select(SessionEvent.stream_ms, SessionEvent.stream_seq)
                    .where(SessionEvent.session_id == session_id, SessionEvent.run_id == run_id)
                    .order_by(SessionEvent.stream_ms.desc(), SessionEvent.stream_seq.desc())
                    .limit(1)
                )
            ).first()
        durable = f"{row[0]}-{row[1]}" if row is not None else None
        if newest is None or (durable is not None and _later(durable, newest)):
            return durable
        return newest

    async def _read(
        self, key: str, last: str, block_ms: int | None, sub: Subscription | None = None
    ) -> list[LogEntry] | None:
        """The next entries after `last`. Once the follower is closing a read does not block: what is already
        there is still delivered (a drained run's `done`), and None means "nothing more, end the stream"."""
        if block_ms is None:
            return await self.events.read_after(key, last, count=READ_COUNT)
        if self.closing.is_set():
            return await self.events.read_after(key, last, count=READ_COUNT) or None
        if sub is not None:
            # No task or connection of our own: the shared read wakes us (`close` wakes every waiting read).
            entries = await sub.read(last, count=READ_COUNT, block_ms=block_ms)
            if not entries and self.closing.is_set():
                return await self.events.read_after(key, last, count=READ_COUNT) or None
            return entries
        read = asyncio.ensure_future(self.events.read_after(key, last, count=READ_COUNT, block_ms=block_ms))
        closed = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((read, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Closing, or the client went away (this task is cancelled): the read must not outlive us.
            closed.cancel()
            await cancel_and_wait(read)
        if read.cancelled():
            return await self.events.read_after(key, last, count=READ_COUNT) or None
        return read.result()

    async def follow(self, session_id: UUID, run_id: UUID, after: str) -> AsyncIterator[list[SSEFrame] | None]:
        """Batches of this run's frames in stream order, ending with the one holding `done`; None: ping now."""
        metrics.stream_followers.inc()
        try:
            async for batch in self._follow(session_id, run_id, after):
                yield batch
        finally:
            metrics.stream_followers.dec()

    async def _follow(self, session_id: UUID, run_id: UUID, after: str) -> AsyncIterator[list[SSEFrame] | None]:
        key = events_key(session_id)
        run = str(run_id).encode()
        cursor = after  # where the stream read goes on (entries of any run)
        delivered = after  # the last of this run's events the client has
        outage_since: float | None = None
        last_yield = time.monotonic()
        # The first look does not block: a client rejoining after `done` gets its end at once.
        block_ms: int | None = None
        read_after_end = False
        sub: Subscription | None = None  # the live part, through the shared reader (one node)
        try:
            while True:
                try:
                    if block_ms is not None and sub is None and self.hub is not None:
                        sub = self.hub.subscribe(key, cursor)
                    entries = await self._read(key, cursor, block_ms, sub)
                    if entries is None:
                        return  # this instance is shutting down
                    mine: list[SSEFrame] = []
                    # Stream ids only grow, so once one entry is past what the client has, every later one is: the
                    # ids are compared until then, not for every entry of a burst.
                    past = False
                    for entry in entries:
                        cursor = entry.id
                        fields = entry.fields
                        if fields.get("r") != run:
                            continue
                        if not past:
                            past = _later(cursor, delivered)
                            if not past:
                                continue
                        event = fields.get("e", b"message").decode()
                        mine.append(SSEFrame(cursor, event, fields.get("d", b"{}")))
                        if event == "done":
                            break
                    if not mine and await self._has_ended(session_id, run_id):
                        if entries or not read_after_end:
                            # Its `done` may have reached the stream after this read (the lease goes as `done` is
                            # appended): read on to the stream's end, without blocking, before asking Postgres,
                            # whose copy of the last events can lag (the persister batches; under load, seconds).
                            read_after_end = True
                            block_ms = None
                            continue
                        # Ended, and the stream has nothing more of it: what it missed is in Postgres.
                        async for batch in self._replay_ended(session_id, run_id, delivered):
                            yield batch
                        return
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
                block_ms = self.ping_ms
                if mine:
                    delivered = mine[-1].id
                    last_yield = time.monotonic()
                    yield mine
                    if mine[-1].event == "done":
                        return
                    if self.closing.is_set():
                        return  # shutting down: what was there is delivered; a run elsewhere goes on without us
                elif not entries or time.monotonic() - last_yield >= self.ping_interval:
                    last_yield = time.monotonic()
                    yield None  # a blocking read's worth of silence (for this run): ping
        finally:
            if sub is not None:
                sub.close()  # the client left or the run ended: the shared read stops naming this stream

    async def _has_ended(self, session_id: UUID, run_id: UUID) -> bool:
        """While its lease names it the run is live (no database query); otherwise Postgres decides."""
        lease = decode_lease(await self.lease.get(active_key(session_id)))
        if lease is not None and lease.run_id == run_id:
            return False
        return is_ended(await self.store.status_of(run_id))

    async def _replay_ended(self, session_id: UUID, run_id: UUID, after: str) -> AsyncIterator[list[SSEFrame]]:
        deadline = time.monotonic() + DONE_PERSIST_WAIT
        while True:
            frames = await self.replay_from_db(session_id, run_id, after)
            if frames:
                yield frames
                after = frames[-1].id
                if frames[-1].event == "done":
                    return
            elif await self._has_done(session_id, run_id):
                return  # the client already had the end
            elif not await self._session_exists(session_id):
                return  # deleted with its session: its events went with it and none will come
            if time.monotonic() > deadline:
                logger.warning("run %s ended but its done never reached Postgres", run_id)
                return
            await asyncio.sleep(0.05)

    async def _session_exists(self, session_id: UUID) -> bool:
        async with self.alchemy.get_session() as db:
            found = (await db.execute(select(AgentSession.id).where(AgentSession.id == session_id))).first()
        return found is not None

    async def _has_done(self, session_id: UUID, run_id: UUID) -> bool:
        async with self.alchemy.get_session() as db:
            found = (
                await db.execute(
                    select(SessionEvent.id)
                    .where(
                        SessionEvent.session_id == session_id,
                        SessionEvent.run_id == run_id,
                        SessionEvent.event == "done",
                    )
                    .limit(1)
                )
            ).first()
        return found is not None

    async def replay_from_db(self, session_id: UUID, run_id: UUID, after: str) -> list[SSEFrame]:
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
