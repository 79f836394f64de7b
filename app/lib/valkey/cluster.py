"""`ResilientValkeyCluster`: valkey-py's asyncio `ValkeyCluster`, with two fixes for a primary's failover.

1. After any node error the client re-reads the topology, then asks the *first primary of the slot map* for its
   command table (COMMAND) and makes it the default node. Until the dead primary's replica is promoted the slot
   map still names the dead node, so that step fails, and with it every command on every shard, for the whole
   failover (measured: 100 % errors on the healthy shards for ~2.5 s). Here the table is loaded once (it does not
   change) and the default node is the first primary that answers, so the other shards keep serving.
2. XREAD's keys are found with a `COMMAND GETKEYS` round trip per call (its keys are "movable"); here they are
   read from the arguments (after STREAMS), like valkey-py already does for EVAL/EVALSHA.

Both lean on `ValkeyCluster` internals (`_initialize`, `_lock`, `nodes_manager`, `commands_parser`); the
failover test (tests/integration/cluster/test_failover.py) fails if they stop working."""

from __future__ import annotations

import asyncio
from typing import Any

from valkey.asyncio.cluster import ValkeyCluster
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError
from valkey.exceptions import ValkeyClusterException


class ResilientValkeyCluster(ValkeyCluster):
    async def initialize(self) -> ResilientValkeyCluster:
        if self._closed:
            raise ValkeyClusterException("ValkeyCluster is closed")
        if self._initialize:
            if not self._lock:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._closed:
                    raise ValkeyClusterException("ValkeyCluster is closed")
                if self._initialize:
                    try:
                        await self.nodes_manager.initialize()
                        await self._pick_default_node()
                        self._initialize = False
                    except BaseException:
                        await self.nodes_manager.aclose()
                        await self.nodes_manager.aclose("startup_nodes")
                        raise
        return self

    async def _pick_default_node(self) -> None:
        """The first primary that answers becomes the default node (keyless commands, the command table)."""
        manager = self.nodes_manager
        primaries = manager.get_nodes_by_server_type("primary")
        first = manager.default_node
        candidates = [first, *(n for n in primaries if n is not first)] if first is not None else primaries
        error: Exception | None = None
        for node in candidates:
            try:
                if self.commands_parser.commands:
                    await node.execute_command("PING")
                    self.commands_parser.node = node
                else:
                    await self.commands_parser.initialize(node)
            except (ValkeyConnectionError, ValkeyTimeoutError, OSError) as exc:
                error = exc
                continue
            manager.default_node = node
            return
        assert error is not None
        raise error

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if _token(command) == "XREAD":
            tokens = [_token(a) for a in args]
            if "STREAMS" in tokens:
                rest = args[tokens.index("STREAMS") + 1 :]
                keys = rest[: len(rest) // 2]
                slots = {self.keyslot(key) for key in keys}
                if len(slots) == 1:
                    return slots.pop()
        slot: int = await super()._determine_slot(command, *args)
        return slot


def _token(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").upper()
    return str(value).upper()
