"""`InstancePresence`: each live instance keeps a short-lived key of its own; a missing key means the
instance is gone (or Valkey lost its keys: the owner writes it again within one interval, so readers confirm
an absence over a window longer than that before acting on it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.lib.valkey.client import ValkeyClient
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.keys import scoped_key
from app.lib.valkey.timeouts import bounded

logger = logging.getLogger(__name__)


def presence_key(instance_id: str) -> str:
    # Its own hash tag per instance: one key, one slot, in a cluster too.
    return scoped_key(f"instance:{instance_id}", "presence")


class InstancePresence:
    def __init__(self, client: ValkeyClient, instance_id: str, *, ttl: float, interval: float) -> None:
        self._client = client
        self.instance_id = instance_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="instance-presence")

    async def stop(self) -> None:
        """Stops announcing and removes the key: a clean exit is seen at once, not after the TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(*VALKEY_ERRORS):
            async with bounded():
                await self._client.delete(presence_key(self.instance_id))

    async def announce(self) -> None:
        async with bounded():
            await self._client.set(presence_key(self.instance_id), b"1", px=self.ttl_ms)

    async def _loop(self) -> None:
        while True:
            try:
                await self.announce()
            except VALKEY_ERRORS:
                logger.warning("instance presence: Valkey unreachable")
            await asyncio.sleep(self.interval)

    async def alive(self, instance_ids: list[str]) -> dict[str, bool]:
        """Which of `instance_ids` announce themselves now (one key each, pipelined: no cross-slot command)."""
        if not instance_ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for instance_id in instance_ids:
            pipe.exists(presence_key(instance_id))
        async with bounded():
            found = await pipe.execute()
        return {i: bool(f) for i, f in zip(instance_ids, found, strict=True)}
