"""`ResilientValkeyCluster`: valkey-py's asyncio `ValkeyCluster`, with two fixes for a primary's failover.

1. After any node error the client re-reads the topology, then asks the *first primary of the slot map* for its
   command table (COMMAND) and makes it the default node. Until the dead primary's replica is promoted the slot
   map still names the dead node, so that step fails, and with it every command on every shard, for the whole
   failover (measured: 100 % errors on the healthy shards for ~2.5 s). Here the table is loaded once (it does not
   change) and the default node is the first primary that answers, so the other shards keep serving.
2. XREAD's keys are found with a `COMMAND GETKEYS` round trip per call (its keys are "movable"); here they are
   read from the arguments (after STREAMS), like valkey-py already does for EVAL/EVALSHA.

3. A command that fails with a connection error drops its node from the client's startup nodes (the nodes it
   re-reads the topology from), and each re-read closes every connection, so the blocking reads in flight on
   *healthy* nodes fail too and drop theirs: under load the list empties and the client could never reconnect
   ("Valkey Cluster cannot be connected ... None"), for good. Here every re-read starts from the seed node(s) of
   `VALKEY_URL` plus every node known so far, and "no node reachable" is a connection error (503, not 500).

All lean on `ValkeyCluster` internals (`_initialize`, `_lock`, `nodes_manager`, `commands_parser`); the
failover test (tests/integration/cluster/test_failover.py) fails if they stop working."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlparse

from valkey.asyncio.cluster import ClusterNode, ValkeyCluster
from valkey.cluster import get_node_name
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import NoScriptError, ResponseError, SlotNotCoveredError, ValkeyClusterException
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from app.lib.compat import require_tested
from app.lib.valkey.pipelined_get import PipelinedGetter, ScriptArg


class ResilientValkeyCluster(ValkeyCluster):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_tested("valkey", __name__)
        super().__init__(*args, **kwargs)
        self._seeds: list[tuple[str, int]] = [(n.host, int(n.port)) for n in self.nodes_manager.startup_nodes.values()]

    def _reseed(self) -> None:
        """Startup nodes = the seeds + every node known, whatever failed lately (unreachable ones are skipped)."""
        manager = self.nodes_manager
        known = {(n.host, int(n.port)) for n in manager.nodes_cache.values()}
        for host, port in [*self._seeds, *sorted(known)]:
            name = get_node_name(host, port)
            if name not in manager.startup_nodes:
                manager.startup_nodes[name] = ClusterNode(host, port, **manager.connection_kwargs)

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
                        self._reseed()
                        try:
                            await self.nodes_manager.initialize()
                        except ValkeyClusterException as exc:  # no node reachable: an outage like any other
                            raise ValkeyConnectionError(f"Valkey Cluster unreachable: {exc}") from exc
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


class ClusterPipelinedGetter:
    """`PipelinedGetter` per primary: the hot-path GET written straight to the connection of the node that serves
    the key's slot (the cluster client's slot map says which), many requests' GETs in one write.

    Anything unusual (a MOVED/ASK after a resharding or failover, a node gone, a slot not covered, the client
    not yet connected) goes through the cluster client instead, which resolves it and refreshes the map."""

    def __init__(self, cluster: ValkeyCluster, url: str, *, connect_timeout: float = 1.0) -> None:
        self._cluster = cluster
        parsed = urlparse(url)
        self._credentials = (
            f"{quote(parsed.username or '')}:{quote(parsed.password or '')}@" if parsed.password is not None else ""
        )
        self._scheme = parsed.scheme or "redis"
        self._connect_timeout = connect_timeout
        self._getters: dict[str, PipelinedGetter] = {}

    async def get(self, key: str) -> bytes | None:
        getter = self._getter_for(key)
        if getter is not None:
            try:
                return await getter.get(key)
            except (ResponseError, ValkeyConnectionError):
                pass  # MOVED/ASK/CLUSTERDOWN/TRYAGAIN or a dead node: the cluster client follows or reports it
        value: bytes | None = await self._cluster.get(key)
        return value

    async def eval_script(self, sha: str, source: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        getter = self._getter_for(keys[0]) if keys else None
        if getter is not None:
            try:
                return await getter.eval_script(sha, source, keys, args)
            except (ResponseError, ValkeyConnectionError):
                pass  # as for GET: the cluster client follows or reports it
        cluster: Any = self._cluster  # valkey-py's stubs type script arguments as str only
        try:
            return await cluster.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await cluster.eval(source, len(keys), *keys, *args)

    def _getter_for(self, key: str) -> PipelinedGetter | None:
        """The pipelined connection to the primary serving `key`'s slot; None while the slot map is unknown."""
        cluster = self._cluster
        if cluster._initialize:
            return None
        try:
            node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))
        except SlotNotCoveredError:
            return None
        getter = self._getters.get(node.name)
        if getter is None:
            url = f"{self._scheme}://{self._credentials}{node.host}:{node.port}/0"
            getter = self._getters[node.name] = PipelinedGetter(url, connect_timeout=self._connect_timeout)
        return getter

    async def aclose(self) -> None:
        getters, self._getters = self._getters, {}
        for getter in getters.values():
            await getter.aclose()
