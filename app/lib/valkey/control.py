"""`ControlChannel`: instance-to-instance messages over one pub/sub channel, plus one-shot replies.

Every instance subscribes; a message names its target (e.g. a run id) and only the instance that owns
the target acts. Replies go through a list (LPUSH/BLPOP) so a reply sent before the asker waits is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

from valkey.asyncio import Valkey

from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.keys import scoped_key
from app.lib.valkey.timeouts import bounded

logger = logging.getLogger(__name__)

# Receives each message's raw bytes; decoding them is the sender's and receiver's business, not the channel's.
Handler = Callable[[bytes], Awaitable[None]]


class ControlChannel:
    def __init__(self, client: Valkey, blocking_client: Valkey, channel: str) -> None:
        self._client = client
        self._blocking = blocking_client
        self.channel = channel
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def publish(self, payload: bytes, *, marker: tuple[str, str, int] | None = None) -> int:
        """Publishes `payload`; with `marker` (key, value, ttl) also sets that key, in the same round trip."""
        if marker is None:
            async with bounded():
                receivers: int = await self._client.publish(self.channel, payload)
            return receivers
        key, value, ttl = marker
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, value, ex=ttl)
        pipe.publish(self.channel, payload)
        async with bounded():
            _, receivers = await pipe.execute()
        return int(receivers)

    @staticmethod
    def reply_key(scope: object) -> str:
        """A fresh key for one reply, in the scope's slot."""
        return scoped_key(scope, f"reply:{secrets.token_hex(8)}")

    async def reply(self, reply_key: str, payload: bytes, ttl: int = 60) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.lpush(reply_key, payload)
        pipe.expire(reply_key, ttl)
        async with bounded():
            await pipe.execute()

    async def wait_reply(self, reply_key: str, timeout: float) -> bytes | None:
        # BLPOP takes whole seconds (0 would mean "forever").
        wait = max(1, round(timeout))
        async with bounded(extra=wait):
            result = await self._blocking.blpop([reply_key], timeout=wait)  # type: ignore[misc]
        if result is None:
            return None
        reply: bytes = result[1]
        return reply

    def start(self, handler: Handler) -> None:
        self._task = asyncio.create_task(self._listen(handler), name="control-channel")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _listen(self, handler: Handler) -> None:
        delay = 0.05
        while True:
            pubsub = self._blocking.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                delay = 0.05
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    payload = message["data"]
                    # Handlers are quick (they signal local tasks); run them inline to keep order.
                    try:
                        await handler(payload)
                    except Exception:
                        logger.exception("control message handler failed")
            except asyncio.CancelledError:
                raise
            except VALKEY_ERRORS:
                self.subscribed.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


class SignalMarker:
    """A short-lived marker key beside a control message (e.g. an interrupt), so a receiver that missed
    the message still finds the signal when it polls."""

    def __init__(self, client: Valkey) -> None:
        self._client = client

    async def get(self, key: str) -> str | None:
        async with bounded():
            value = await self._client.get(key)
        return value.decode() if isinstance(value, bytes) else value
