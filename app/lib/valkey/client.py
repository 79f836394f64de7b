"""The shared Valkey clients, owned by `ValkeyPlugin` (opened and closed in the app lifespan)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from valkey.asyncio import Valkey
from valkey.asyncio.cluster import ValkeyCluster
from valkey.exceptions import NoScriptError

from app.lib.compat.valkey_cluster import ClusterPipelinedGetter, ResilientValkeyCluster
from app.lib.valkey.pipelined_get import KeyGetter, PipelinedGetter
from app.lib.valkey.timeouts import bounded, set_command_timeout

ValkeyClient: TypeAlias = Valkey | ValkeyCluster
"""One node or a Valkey Cluster (`VALKEY_CLUSTER=true`): the primitives use only what both offer — single-slot
commands, scripts and non-transactional pipelines (a cluster pipeline splits itself by node)."""


class ClusterNotOkError(Exception):
    """The cluster answers but says it cannot serve every slot (`cluster_state:fail`)."""


@dataclass
class ValkeyClients:
    """`main` carries every short command; `blocking` carries XREAD BLOCK / BLPOP.

    Neither has a socket timeout: valkey-py implements it with a task per command, which cost ~45 µs of a
    ~90 µs GET here. Commands on `main` are bounded by the primitives with `asyncio.timeout` instead (a
    timer, not a task); a dead server is noticed at once anyway (connection refused or reset).

    With `cluster`, both are `ValkeyCluster` clients (they discover the nodes from the one in the URL and follow
    MOVED/ASK and failovers); each keeps its own connection pool per node."""

    main: ValkeyClient
    blocking: ValkeyClient
    getter: KeyGetter
    """The hot-path GET (see `PipelinedGetter`; on a cluster one per primary, routed by slot)."""
    appender: KeyGetter | None = None
    """One node only: the event appends of every run on this instance, pipelined on a connection of their own
    (see `EventLog`). A cluster appends through `main`, which routes each stream to its node."""
    cluster: bool = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float,
        connect_timeout: float,
        max_connections: int,
        cluster: bool = False,
    ) -> ValkeyClients:
        set_command_timeout(socket_timeout)
        if cluster:
            main_cluster = _cluster_client(url, connect_timeout, max_connections, keepalive=False)
            return cls(
                main=main_cluster,
                blocking=_cluster_client(url, connect_timeout, max_connections, keepalive=True),
                getter=ClusterPipelinedGetter(main_cluster, url, connect_timeout=connect_timeout),
                cluster=True,
            )
        main = Valkey.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            health_check_interval=30,
        )
        blocking = Valkey.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=connect_timeout,
            socket_keepalive=True,
            max_connections=max_connections,
            health_check_interval=30,
        )
        return cls(
            main=main,
            blocking=blocking,
            getter=PipelinedGetter(url, connect_timeout=connect_timeout),
            appender=PipelinedGetter(url, connect_timeout=connect_timeout),
        )

    async def check(self) -> dict[str, Any]:
        """Raises if Valkey cannot serve (unreachable; on a cluster, also `cluster_state` not `ok`); returns what
        readiness reports beside "up"."""
        async with bounded():
            await self.main.ping()
        if not isinstance(self.main, ValkeyCluster):
            return {}
        async with bounded():
            info: dict[str, Any] = await self.main.cluster_info()
        state = str(info.get("cluster_state", "unknown"))
        details = {
            "cluster_state": state,
            "cluster_size": int(info.get("cluster_size", 0)),
            "cluster_known_nodes": int(info.get("cluster_known_nodes", 0)),
            "cluster_slots_ok": int(info.get("cluster_slots_ok", 0)),
        }
        if state != "ok":
            raise ClusterNotOkError(details)
        return details

    async def aclose(self) -> None:
        await self.getter.aclose()
        if self.appender is not None:
            await self.appender.aclose()
        await self.main.aclose()
        await self.blocking.aclose()


def _cluster_client(url: str, connect_timeout: float, max_connections: int, *, keepalive: bool) -> ValkeyCluster:
    return ResilientValkeyCluster.from_url(
        url,
        socket_timeout=None,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=keepalive,
        # Per node.
        max_connections=max_connections,
        health_check_interval=30,
        # A command whose node is gone is retried after a topology refresh, then fails like an unreachable node
        # (503 VALKEY_UNAVAILABLE, reads from Postgres) until the replica takes over.
        cluster_error_retry_attempts=2,
    )


class Script:
    """A Lua script called by its SHA1 (EVALSHA); a node that does not know it yet (new, restarted, a replica just
    promoted) gets the body once (EVAL, on that node only).

    Not valkey-py's `AsyncScript`: after NOSCRIPT it runs SCRIPT LOAD on *every* primary of a cluster, which fails
    while any one of them is down, so during a failover a script new to a healthy shard would fail there too."""

    __slots__ = ("_client", "sha", "source")

    def __init__(self, client: ValkeyClient, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[str | bytes | int | float] = ()) -> Any:
        parts: list[Any] = [*keys, *args]
        try:
            return await self._client.evalsha(self.sha, len(keys), *parts)  # type: ignore[misc]
        except NoScriptError:
            return await self._client.eval(self.source, len(keys), *parts)  # type: ignore[misc]


def register_script(client: ValkeyClient, source: str) -> Script:
    return Script(client, source)
