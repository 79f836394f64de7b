"""`DistributedLock`: a token lock with TTL whose waiters are woken when it is released.

A waiter that finds the lock taken blocks on the lock's wake list (`<lock key>:wake`, the same `{hash tag}`,
so the release script touches one cluster slot) with BLPOP. `release` deletes the lock and pushes one wake
token in the same script: Valkey hands it to the longest-blocked waiter (FIFO), which retries at once. The list
keeps at most one token (one pending wake-up is enough: it covers a waiter between its failed SET and its
BLPOP) and expires with the lock's TTL. A holder that dies releases nothing: its lock expires after the TTL,
and waiters notice within `poll` seconds (the BLPOP timeout), the only time anybody waits on a clock.
No pub/sub: a cluster broadcasts PUBLISH to every node."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.timeouts import bounded

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('rpush', KEYS[2], '1')
  redis.call('ltrim', KEYS[2], -1, -1)
  redis.call('pexpire', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


class LockTimeoutError(Exception):
    """The lock was still held by someone else when the acquire timeout ran out."""


def wake_key(key: str) -> str:
    """The list a lock's waiters block on; it shares the lock key's hash tag (`{...}`), so its cluster slot."""
    return f"{key}:wake"


class DistributedLock:
    def __init__(
        self,
        client: ValkeyClient,
        *,
        blocking: ValkeyClient | None = None,
        ttl_ms: int = 5000,
        timeout: float = 5.0,
        poll: float = 0.2,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """`blocking` carries the waiters' BLPOPs (each holds a connection while it waits); `poll` bounds one
        wait, so a lock whose holder died (no release, only its TTL) is retried that often."""
        self._client = client
        self._blocking = blocking or client
        self.ttl_ms = ttl_ms
        self.timeout = timeout
        self.poll = poll
        self._release = register_script(client, _RELEASE)
        self._observe = observe or (lambda outcome, waited: None)

    async def acquire(self, key: str) -> str:
        """Returns the token that proves ownership; raises `LockTimeoutError` after `timeout`."""
        if "{" not in key:
            raise ValueError(f"lock keys carry a hash tag, so their wake list shares the slot: {key!r}")
        token = secrets.token_hex(16)
        started = time.monotonic()
        deadline = started + self.timeout
        wake = wake_key(key)
        while True:
            async with bounded():
                acquired = await self._client.set(key, token, nx=True, px=self.ttl_ms)
            if acquired:
                self._observe("acquired", time.monotonic() - started)
                return token
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._observe("timeout", time.monotonic() - started)
                raise LockTimeoutError(key)
            wait = max(0.01, min(remaining, self.poll))
            async with bounded(extra=wait):
                await self._blocking.blpop([wake], timeout=wait)  # type: ignore[misc,arg-type]  # seconds: a float

    async def release(self, key: str, token: str) -> bool:
        """Deletes the key only if it still holds our token (a lock that expired is not ours to free) and
        wakes the next waiter."""
        async with bounded():
            return bool(await self._release(keys=[key, wake_key(key)], args=[token, self.ttl_ms]))
