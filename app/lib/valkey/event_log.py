"""`EventLog`: a Valkey Stream per scope; writers append in pipelined batches, readers follow with XREAD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.pipelined_get import KeyGetter
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


class EventLog:
    def __init__(
        self, client: ValkeyClient, blocking_client: ValkeyClient, *, appender: KeyGetter | None = None
    ) -> None:
        """`appender` (one node: a `PipelinedGetter` of its own): the appends of every writer on this instance that
        are due in the same moment go out in one write on one connection, each bounded by that batch's one timer,
        instead of one script call (and, when they overlap, one pooled connection) each: a thousand live runs
        ticking at once were a thousand commands a tick and as many connections. Its own connection, not the
        cache's: a cached read must not wait behind a burst's 500-entry append. Without it (a cluster), each
        append is one script call on `client`, which routes it to the stream's node."""
        self._client = client
        self._blocking = blocking_client
        self._append_many = register_script(client, _APPEND_MANY)
        self._reset = register_script(client, _RESET)
        self._appender = appender

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
        if self._appender is not None:
            ids: Any = await self._appender.eval_script(self._append_many.sha, self._append_many.source, [key], args)
        else:
            async with bounded():
                ids = await self._append_many([key], args)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

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
