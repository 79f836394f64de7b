"""`RunLease`: who runs what. SET NX with TTL; only the owner (token compare) renews or releases."""

from __future__ import annotations

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.timeouts import bounded

# Renew if we still own it; re-take it if it vanished (Valkey flushed or restarted) so a live run keeps
# its claim; report loss if someone else holds it.
_RENEW = """
local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) return 1 end
return 0
"""

# Release the lease and append a final entry to a stream in one step: the entry is visible only once the
# lease is free, and no new owner can reset the stream between the two.
_RELEASE_WITH_ENTRY = """
local released = 0
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) released = 1 end
local id = redis.call('xadd', KEYS[2], '*', unpack(ARGV, 3))
redis.call('expire', KEYS[2], ARGV[2])
return {released, id}
"""


class RunLease:
    def __init__(self, client: ValkeyClient, *, ttl_ms: int) -> None:
        self._client = client
        self.ttl_ms = ttl_ms
        self._renew = register_script(client, _RENEW)
        self._release = register_script(client, _RELEASE)
        self._release_with_entry = register_script(client, _RELEASE_WITH_ENTRY)

    async def acquire(self, key: str, token: bytes) -> bool:
        """`token` is the lease value itself (e.g. the JSON `{run_id, instance_id, started_at}`)."""
        async with bounded():
            return bool(await self._client.set(key, token, nx=True, px=self.ttl_ms))

    async def take(self, key: str, token: bytes) -> None:
        """Sets the lease whoever holds it: only for an owner that Postgres already made the owner."""
        async with bounded():
            await self._client.set(key, token, px=self.ttl_ms)

    async def get(self, key: str) -> bytes | None:
        async with bounded():
            value: bytes | None = await self._client.get(key)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """One GET per key in one pipeline, not MGET: the keys are in many slots (one per session), and a cluster
        pipeline sends each node its own GETs (in parallel), where a cross-slot MGET would be refused."""
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        async with bounded():
            values: list[bytes | None] = await pipe.execute()
        return values

    async def renew(self, key: str, token: bytes) -> bool:
        """False when another owner holds the lease: the caller has lost it and must stop."""
        async with bounded():
            return bool(await self._renew(keys=[key], args=[token, self.ttl_ms]))

    async def release(self, key: str, token: bytes) -> bool:
        async with bounded():
            return bool(await self._release(keys=[key], args=[token]))

    async def release_with_entry(
        self, key: str, token: bytes, stream_key: str, fields: dict[str, str | bytes], stream_ttl: int
    ) -> tuple[bool, str]:
        """Releases the lease (if still ours) and XADDs `fields` to `stream_key` atomically.

        Returns whether the lease was released and the new entry's id."""
        flat: list[str | bytes] = []
        for name, value in fields.items():
            flat.extend((name, value))
        async with bounded():
            released, entry_id = await self._release_with_entry(keys=[key, stream_key], args=[token, stream_ttl, *flat])
        return bool(released), entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
