"""`ControlChannel`: instance-to-instance messages, each sent to the one instance it is for, plus one-shot replies.

Every instance reads its own control Stream, `agentapi:{instance:<id>}:control` (XREAD BLOCK on the blocking
client); a sender that knows which instance owns the target (a run's `instance_id`, in Postgres and in its
lease) XADDs the message to that instance's stream. One message costs one XADD on one shard, however many
shards or instances there are: no broadcast (a classic PUBLISH is forwarded to every node of a cluster, and
`valkey.asyncio.cluster.ValkeyCluster` has no pub/sub at all). A stream also keeps a message sent while its
reader reconnects (it reads on from the last id it saw), which pub/sub drops. Streams are capped (MAXLEN ~)
and expire an hour after their last message, so a dead instance's stream goes away by itself.

Replies go through a list (LPUSH/BLPOP) in the asker's chosen slot, so a reply sent before the asker waits is
kept."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import cast

from valkey.asyncio.client import Pipeline

from app.lib.tasks import cancel_and_wait
from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.keys import scoped_key
from app.lib.valkey.pipelined_get import KeyGetter
from app.lib.valkey.timeouts import bounded

logger = logging.getLogger(__name__)

# Receives each message's raw bytes; decoding them is the sender's and receiver's business, not the channel's.
Handler = Callable[[bytes], Awaitable[None]]

FIELD = "m"
STREAM_MAXLEN = 1000
STREAM_TTL = 3600
BLOCK_MS = 5000
"""How long one XREAD waits before it is issued again (the bound on noticing a hung server)."""

_REPLY = """
redis.call('lpush', KEYS[1], ARGV[1])
redis.call('expire', KEYS[1], ARGV[2])
return 1
"""


def control_stream_key(instance_id: str) -> str:
    # The instance's own hash tag (its presence key shares it): one stream, one slot.
    return scoped_key(f"instance:{instance_id}", "control")


class ControlChannel:
    def __init__(
        self, client: ValkeyClient, blocking_client: ValkeyClient, instance_id: str, *, announce: str | None = None
    ) -> None:
        self._client = client
        # On one node, each message is also PUBLISHed on this operators' channel (`agentapi:control`), where
        # `SUBSCRIBE` shows the control traffic; nothing reads it. Not on a cluster: PUBLISH goes to every node.
        self._announce = announce
        self._blocking = blocking_client
        self.instance_id = instance_id
        self.stream = control_stream_key(instance_id)
        self._reply = register_script(client, _REPLY)
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while this instance reads its stream (cleared while Valkey is unreachable)."""

    async def send(self, instance_id: str, payload: bytes, *, marker: tuple[str, str, int] | None = None) -> None:
        """Sends `payload` to `instance_id`; with `marker` (key, value, ttl) also sets that key, in the same round
        trip (on a cluster the pipeline goes to both shards at once)."""
        key = control_stream_key(instance_id)
        pipe = self._client.pipeline(transaction=False)
        if marker is not None:
            marker_key, value, ttl = marker
            pipe.set(marker_key, value, ex=ttl)
        pipe.xadd(key, {FIELD: payload}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(key, STREAM_TTL)
        if self._announce is not None:
            # Set on one node only (a cluster's pipeline has no PUBLISH, and it would go to every node).
            cast("Pipeline", pipe).publish(self._announce, payload)
        async with bounded():
            await pipe.execute()

    @staticmethod
    def reply_key(scope: object) -> str:
        """A fresh key for one reply, in the scope's slot."""
        return scoped_key(scope, f"reply:{secrets.token_hex(8)}")

    async def reply(self, reply_key: str, payload: bytes, ttl: int = 60) -> None:
        async with bounded():
            await self._reply(keys=[reply_key], args=[payload, ttl])

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
        await cancel_and_wait(self._task)
        self._task = None

    async def _start_id(self) -> str:
        """The newest id already in our stream: older messages were for an earlier life of this instance id."""
        async with bounded():
            items = await self._client.xrevrange(self.stream, count=1)
        if not items:
            return "0-0"
        eid = items[0][0]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    async def _listen(self, handler: Handler) -> None:
        delay = 0.05
        last: str | None = None
        while True:
            try:
                if last is None:
                    last = await self._start_id()
                self.listening.set()
                async with bounded(extra=BLOCK_MS / 1000):
                    reply = await self._blocking.xread({self.stream: last}, count=100, block=BLOCK_MS)
                delay = 0.05
                for _, items in reply or []:
                    for eid, fields in items:
                        last = eid.decode() if isinstance(eid, bytes) else str(eid)
                        payload = fields.get(FIELD.encode())
                        if payload is None:
                            continue
                        # Handlers are quick (they signal local tasks); run them inline to keep order.
                        try:
                            await handler(payload)
                        except Exception:
                            logger.exception("control message handler failed")
            except asyncio.CancelledError:
                raise
            except VALKEY_ERRORS:
                self.listening.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class SignalMarker:
    """A short-lived marker key beside a control message (e.g. an interrupt), so a receiver that missed
    the message still finds the signal when it polls."""

    def __init__(self, client: ValkeyClient, getter: KeyGetter | None = None) -> None:
        self._client = client
        # Every live run polls its marker each second: through the pipelined GET (a fraction of a pooled one).
        self._getter = getter

    async def get(self, key: str) -> str | None:
        if self._getter is not None:
            value: bytes | str | None = await self._getter.get(key)  # bounded by the getter itself
        else:
            async with bounded():
                value = await self._client.get(key)
        return value.decode() if isinstance(value, bytes) else value
