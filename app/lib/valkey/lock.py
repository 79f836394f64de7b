"""`DistributedLock`: a token lock with TTL, acquired with jittered exponential backoff."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.timeouts import bounded

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LockTimeoutError(Exception):
    """The lock was still held by someone else when the acquire timeout ran out."""


class DistributedLock:
    def __init__(
        self,
        client: ValkeyClient,
        *,
        ttl_ms: int = 5000,
        timeout: float = 5.0,
        initial_delay: float = 0.01,
        max_delay: float = 0.5,
        factor: float = 1.5,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._client = client
        self.ttl_ms = ttl_ms
        self.timeout = timeout
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._factor = factor
        self._release = register_script(client, _RELEASE)
        self._observe = observe or (lambda outcome, waited: None)

    async def acquire(self, key: str) -> str:
        """Returns the token that proves ownership; raises `LockTimeoutError` after `timeout`."""
        token = secrets.token_hex(16)
        started = time.monotonic()
        deadline = started + self.timeout
        delay = self._initial_delay
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
            # Full jitter keeps two waiters from retrying in lock-step.
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))  # noqa: S311
            delay = min(self._max_delay, delay * self._factor)

    async def release(self, key: str, token: str) -> bool:
        """Deletes the key only if it still holds our token (a lock that expired is not ours to free)."""
        async with bounded():
            return bool(await self._release(keys=[key], args=[token]))
