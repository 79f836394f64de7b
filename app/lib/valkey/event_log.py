"""`EventLog`: a Valkey Stream per scope; writers append in pipelined batches, readers follow with XREAD."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from valkey.exceptions import NoScriptError

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.timeouts import bounded

# Every entry of a batch in one script call on the stream's key (one slot), its values concatenated into one
# argument: one command with a handful of arguments to pack and one reply to parse, instead of one command per
# entry (valkey-py's per-command and per-argument packing was most of a burst's CPU).
# ARGV: the lengths of all values ("3,10,36,..."), all values concatenated, then the field names.
_APPEND_MANY = """
local names = {}
for i = 3, #ARGV do names[#names + 1] = ARGV[i] end
local width = #names
local blob = ARGV[2]
local entry = {}
local ids = {}
local pos, k = 1, 0
for len in string.gmatch(ARGV[1], '%d+') do
  local n = tonumber(len)
  entry[k * 2 + 1] = names[k + 1]
  entry[k * 2 + 2] = string.sub(blob, pos, pos + n - 1)
  pos = pos + n
  k = k + 1
  if k == width then
    ids[#ids + 1] = redis.call('xadd', KEYS[1], '*', unpack(entry, 1, width * 2))
    k = 0
  end
end
return ids
"""


class LogEntry(NamedTuple):
    # A tuple, not a frozen dataclass: one is built per entry read, and a frozen dataclass's __init__ costs three
    # times as much (a burst reads tens of thousands a second).
    id: str
    fields: dict[str, bytes]


def parse_entry_id(value: str) -> tuple[int, int]:
    """`<ms>-<seq>` to a sortable pair; raises ValueError on anything else."""
    ms, sep, seq = value.partition("-")
    if not sep:
        return int(ms), 0
    return int(ms), int(seq)


# Empty the stream but keep the key (atomic, one key: a script, as a cluster has no MULTI across a pipeline).
_RESET = """
redis.call('xtrim', KEYS[1], 'MAXLEN', 0)
redis.call('persist', KEYS[1])
return 1
"""


logger = logging.getLogger(__name__)

MAX_PIPELINES = 4
"""Append pipelines in flight at once (each holds a pooled connection while it waits for its replies)."""

_Append = tuple[str, list[str | bytes], "asyncio.Future[Any]"]


class EventLog:
    def __init__(self, client: ValkeyClient, blocking_client: ValkeyClient, *, pipeline_appends: bool = False) -> None:
        """`pipeline_appends` (one node only): the appends of every writer on this instance that are due in the
        same moment go out in one pipeline, one round trip and one connection, instead of one script call (and,
        when they overlap, one pooled connection) each: a thousand live runs ticking at once were a thousand
        commands a tick and as many connections."""
        self._client = client
        self._blocking = blocking_client
        self._append_many = register_script(client, _APPEND_MANY)
        self._reset = register_script(client, _RESET)
        self._pipeline_appends = pipeline_appends
        self._queued: list[_Append] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._sender_starting = False  # a sender exists that has not taken the queue yet

    async def reset(self, key: str) -> None:
        """Empties the stream but keeps the key, so new ids still grow past the old ones; no TTL while live."""
        async with bounded():
            await self._reset(keys=[key])

    async def append_many(self, key: str, entries: Sequence[dict[str, str | bytes]]) -> list[str]:
        """XADDs every entry in one round trip (one script call); returns their ids in order. Entries of one
        call must have the same field names, in the same order."""
        if not entries:
            return []
        names = list(entries[0])
        values: list[bytes] = []
        for fields in entries:
            if list(fields) != names:
                raise ValueError("append_many: every entry needs the same fields, in the same order")
            values += (v.encode() if isinstance(v, str) else v for v in fields.values())
        return await self.append_values(key, names, values)

    async def append_values(self, key: str, names: Sequence[str], values: list[bytes]) -> list[str]:
        """`append_many` for entries given as one flat list of values, `len(names)` per entry in the order of
        `names`: what a busy writer hands over without building a dict per entry."""
        if not values:
            return []
        if len(values) % len(names):
            raise ValueError("append_values: the values are not a whole number of entries")
        args: list[str | bytes] = [",".join([str(len(v)) for v in values]), b"".join(values), *names]
        async with bounded():
            ids = await (self._queue_append(key, args) if self._pipeline_appends else self._append_many([key], args))
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def _queue_append(self, key: str, args: list[str | bytes]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((key, args, future))
        # Appends queued in the same loop turn share a pipeline; while pipelines are in flight, a few more may
        # start (so an append does not wait a whole round trip for the one before), each writer having one
        # append in flight at most, so no stream's entries are reordered.
        if not self._sender_starting and len(self._senders) < MAX_PIPELINES:
            self._sender_starting = True
            task = asyncio.create_task(self._send_appends(), name="event-log-appends")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return future

    async def _send_appends(self) -> None:
        """Sends what is queued in one pipeline, then what was queued meanwhile if no other sender took it."""
        self._sender_starting = False
        while self._queued:
            # A caller whose own bound ran out no longer waits: its writer retries the batch itself.
            batch = [item for item in self._queued if not item[2].done()]
            self._queued = []
            if not batch:
                continue
            try:
                async with bounded(), self._client.pipeline(transaction=False) as pipe:
                    for key, args, _ in batch:
                        pipe.evalsha(self._append_many.sha, 1, key, *args)  # type: ignore[arg-type]  # bytes too
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # noqa: BLE001 - handed to every caller, which handles it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (key, args, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, NoScriptError):
                    # A node that does not know the script yet (new or restarted): once, on its own.
                    try:
                        reply = await self._append_many([key], args)
                    except Exception as exc:  # noqa: BLE001 - handed to every caller, which handles it
                        reply = exc
                if future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def delete(self, *keys: str) -> None:
        async with bounded():
            await self._client.delete(*keys)

    async def read_after(
        self, key: str, after: str, *, count: int = 1000, block_ms: int | None = None
    ) -> list[LogEntry]:
        """Entries with ids greater than `after` ("0-0" for all). With `block_ms`, waits up to that long."""
        client = self._blocking if block_ms is not None else self._client
        # A blocking read may take `block_ms` by design; beyond that plus the command bound, Valkey is hung.
        async with bounded(extra=(block_ms or 0) / 1000):
            reply = await client.xread({key: after}, count=count, block=block_ms)
        if not reply:
            return []
        # RESP2 reply: [[stream, [(id, {field: value}), ...]]]
        _, items = reply[0]
        return [
            LogEntry(eid.decode() if isinstance(eid, bytes) else str(eid), {k.decode(): v for k, v in fields.items()})
            for eid, fields in items
        ]

    async def last_id(self, key: str) -> str | None:
        async with bounded():
            items = await self._client.xrevrange(key, count=1)
        if not items:
            return None
        eid = items[0][0]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    async def ping(self, key: str | None = None) -> None:
        """Raises if Valkey is unreachable (callers that must not proceed without it check first). With `key`, the
        node that serves its slot is asked (one EXISTS): on a cluster, one shard down does not fail the others."""
        async with bounded():
            if key is None:
                await self._client.ping()
            else:
                await self._client.exists(key)
