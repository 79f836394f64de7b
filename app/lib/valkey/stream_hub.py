"""`StreamHub`: one blocking reader per instance for every stream its followers follow.

A follower that did its own XREAD BLOCK held a Valkey connection (and the pool's buffers) for as long as it
followed, and paid one command per event it received: a thousand followers were a thousand blocked
connections and ~10,000 XREADs a second. Here one task does XREAD BLOCK on all followed streams at once and
fans the entries out to in-process subscriptions, so a follower costs a queue. Under load one read returns
many streams' entries (whatever arrived while the last batch was handed out), so the per-event cost falls as
the load grows.

- Joining: a subscription starts at the follower's cursor. A stream new to the hub is read from there; on a
  stream the hub already reads further on, the entries between the two were handed out before this
  subscription existed, so it reads that gap itself (non-blocking reads, like a follower's first look) and
  drops what it then also gets from the hub (every read is "after my cursor"). A slow consumer whose queue
  overflows falls back to the same gap reads instead of growing without bound.
- Re-issuing: the blocking XREAD names the streams followed when it was sent; a stream added meanwhile wakes
  it through an entry on the hub's own wake stream (one XADD, coalesced), which that XREAD also reads from an
  explicit id, so a wake sent before the XREAD reaches Valkey is not lost. A stream whose last subscriber left
  simply drops out of the next XREAD.
- Outages: a failed read marks the hub failed and wakes every subscriber, whose reads then raise that error
  (the same one a follower's own XREAD raised), until a PING succeeds; the cursors are kept, so nothing is
  skipped or repeated when Valkey is back.

One node only: a multi-key XREAD must not span cluster slots, and every session's stream has its own slot, so
on a cluster followers keep their own blocking reads (the caller does not build a hub)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from valkey.exceptions import ConnectionError as ValkeyConnectionError

from app.lib.tasks import cancel_and_wait
from app.lib.valkey.client import ValkeyClient
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import EventLog, LogEntry, parse_entry_id
from app.lib.valkey.keys import scoped_key
from app.lib.valkey.timeouts import bounded

logger = logging.getLogger(__name__)

BLOCK_MS = 5000
"""How long one shared XREAD blocks when nothing arrives (it is re-issued then, and at once on a wake)."""
READ_COUNT = 500
"""Entries per stream per shared read (a burst is read in several)."""
COALESCE_PER_STREAM = 0.00001
MAX_COALESCE = 0.005
"""Reads that bring entries start at least `COALESCE_PER_STREAM` times the followed streams apart (at most
`MAX_COALESCE`): one XREAD naming every followed stream costs in proportion to their number (to build, to
parse, for Valkey to serve), so under load each read then carries many streams' entries, at a cost of a few ms
of latency at a thousand streams and a fraction of one at a few dozen; a quiet hub's read blocks at once."""
MAX_QUEUED = 1000
"""Entries a subscription holds for a consumer that does not read; beyond, it reads the gap from Valkey."""
WAKE_TTL_MS = 60_000


def wake_key(instance_id: str) -> str:
    """The hub's own wake stream: one per instance, in its own slot like the instance's other keys."""
    return scoped_key(f"instance:{instance_id}", "follow-wake")


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Subscription:
    """One follower's view of one stream: entries after its cursor, in stream order, each once."""

    __slots__ = ("_gap_until", "_hub", "_queue", "_waiter", "closed", "key")

    def __init__(self, hub: StreamHub, key: str, gap_until: tuple[int, int] | None) -> None:
        self._hub = hub
        self.key = key
        self._queue: deque[LogEntry] = deque()
        # Entries up to this id are not in the queue (handed out before we joined, or dropped on overflow):
        # read them from the stream itself.
        self._gap_until = gap_until
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    async def read(self, after: str, *, count: int, block_ms: int) -> list[LogEntry]:
        """Up to `count` entries after `after` (the caller's cursor: what it already has), waiting up to `block_ms`
        for one; [] when none came (or `wake` was called). Raises the hub's error while Valkey is unreachable."""
        cursor = parse_entry_id(after)
        if self._gap_until is not None:
            if cursor < self._gap_until:
                entries = await self._hub.events.read_after(self.key, after, count=count)
                if entries:
                    if parse_entry_id(entries[-1].id) >= self._gap_until:
                        self._gap_until = None
                    return entries
            self._gap_until = None  # caught up (or the stream no longer has them: the caller decides)
        self._drop_through(cursor)
        if not self._queue:
            self._hub.raise_if_failed()
            await self._wait(block_ms)
            self._hub.raise_if_failed()
            self._drop_through(cursor)
        taken: list[LogEntry] = []
        while self._queue and len(taken) < count:
            taken.append(self._queue.popleft())
        return taken

    def wake(self) -> None:
        """Ends a waiting `read` now (with what it has)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.clear()
            self._hub._unsubscribe(self)
            self.wake()

    # -- fed by the hub ----------------------------------------------------------------------------

    def _push(self, entries: list[LogEntry]) -> None:
        if len(self._queue) + len(entries) > MAX_QUEUED:
            # A consumer this far behind reads on from the stream (which keeps everything until the run's end).
            self._queue.clear()
            self._gap_until = parse_entry_id(entries[-1].id)
        else:
            self._queue.extend(entries)
        self.wake()

    def _drop_through(self, cursor: tuple[int, int]) -> None:
        queue = self._queue
        while queue and parse_entry_id(queue[0].id) <= cursor:
            queue.popleft()

    async def _wait(self, block_ms: int) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(block_ms / 1000, self.wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


class StreamHub:
    def __init__(
        self,
        events: EventLog,
        client: ValkeyClient,
        blocking_client: ValkeyClient,
        wake_key: str,
    ) -> None:
        self.events = events
        self._client = client
        self._blocking = blocking_client
        self.wake_key = wake_key
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, str] = {}  # per stream: the id the shared read goes on after
        self._reading: dict[str, str] = {}  # the streams the XREAD in flight names, and from where
        self._wake_last = "0-0"
        self._wake_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.reads = 0
        """Shared XREADs issued (for tests and benchmarks)."""

    @property
    def followed(self) -> int:
        """Streams with at least one subscription."""
        return len(self._subs)

    @property
    def subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, key: str, after: str) -> Subscription:
        """Entries of `key` after `after` (what the caller already has), from now on."""
        subs = self._subs.get(key)
        gap: tuple[int, int] | None = None
        if subs is None:
            subs = self._subs[key] = set()
            self._cursors[key] = after
        else:
            hub_at = parse_entry_id(self._cursors[key])
            if hub_at > parse_entry_id(after):
                gap = hub_at
            # (A shared read behind `after` hands out entries this subscription already has: its reads drop them.)
        sub = Subscription(self, key, gap)
        subs.add(sub)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stream-hub")
        elif self._reading.get(key) != self._cursors[key]:
            self._wake()  # the read in flight does not name this stream (or reads it from elsewhere)
        return sub

    def raise_if_failed(self) -> None:
        # A new exception each time (re-raising one object grows its traceback), caused by the real one.
        if self.error is not None:
            raise ValkeyConnectionError(f"stream hub: {type(self.error).__name__}: {self.error}") from self.error

    def wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.wake()

    async def aclose(self) -> None:
        await cancel_and_wait(self._task, self._wake_task)
        self._task = self._wake_task = None

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.key]
            del self._cursors[sub.key]

    def _wake(self) -> None:
        """Makes the XREAD in flight return, so the next one names the new streams (one wake in flight at most)."""
        if self._wake_task is None or self._wake_task.done():
            self._wake_task = asyncio.create_task(self._send_wake(), name="stream-hub-wake")

    async def _send_wake(self) -> None:
        try:
            async with bounded(), self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self.wake_key, WAKE_TTL_MS)
                await pipe.execute()
        except VALKEY_ERRORS:
            # The read in flight fails too (or times out within BLOCK_MS) and the next one names every stream.
            logger.debug("stream hub: wake not sent", exc_info=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.05
        while True:
            if not self._subs:
                self._changed.clear()
                self._reading = {}
                await self._changed.wait()
                continue
            try:
                if self.error is not None:
                    async with bounded():
                        await self._blocking.ping()
                    self.error = None
                streams = {self.wake_key: self._wake_last, **self._cursors}
                self._reading = dict(self._cursors)
                self.reads += 1
                started = loop.time()
                async with bounded(extra=BLOCK_MS / 1000):
                    reply = await self._blocking.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except VALKEY_ERRORS as exc:
                self._fail(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            if reply:
                self._deliver(reply)
                spacing = min(MAX_COALESCE, COALESCE_PER_STREAM * len(self._cursors))
                wait = spacing - (loop.time() - started)
                if wait > 0:
                    await asyncio.sleep(wait)

    def _deliver(self, reply: list[tuple[bytes | str, list[tuple[bytes, dict[bytes, bytes]]]]]) -> None:
        for raw_key, items in reply:
            if not items:
                continue
            key = _id(raw_key)
            if key == self.wake_key:
                self._wake_last = _id(items[-1][0])
                continue
            subs = self._subs.get(key)
            if subs is None or self._cursors[key] != self._reading.get(key):
                # Its last subscriber left while the read was in flight (and maybe a new one joined, from its own
                # cursor): the next read starts where the stream's subscribers are now.
                continue
            entries = [LogEntry(_id(eid), {k.decode(): v for k, v in f.items()}) for eid, f in items]
            self._cursors[key] = entries[-1].id
            for sub in subs:
                sub._push(entries)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            logger.warning("stream hub: Valkey read failed (%s), retrying", type(exc).__name__)
        self.error = exc
        self.wake_all()
