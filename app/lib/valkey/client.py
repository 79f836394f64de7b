"""The shared Valkey clients, owned by `ValkeyPlugin` (opened and closed in the app lifespan)."""

from __future__ import annotations

from dataclasses import dataclass

from valkey.asyncio import Valkey

from app.lib.valkey.pipelined_get import PipelinedGetter
from app.lib.valkey.timeouts import set_command_timeout


@dataclass
class ValkeyClients:
    """`main` carries every short command; `blocking` carries XREAD BLOCK / BLPOP.

    Neither has a socket timeout: valkey-py implements it with a task per command, which cost ~45 µs of a
    ~90 µs GET here. Commands on `main` are bounded by the primitives with `asyncio.timeout` instead (a
    timer, not a task); a dead server is noticed at once anyway (connection refused or reset)."""

    main: Valkey
    blocking: Valkey
    getter: PipelinedGetter
    """The hot-path GET (see `PipelinedGetter`)."""

    @classmethod
    def from_url(
        cls, url: str, *, socket_timeout: float, connect_timeout: float, max_connections: int
    ) -> ValkeyClients:
        set_command_timeout(socket_timeout)
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
        return cls(main=main, blocking=blocking, getter=PipelinedGetter(url, connect_timeout=connect_timeout))

    async def aclose(self) -> None:
        await self.getter.aclose()
        await self.main.aclose()
        await self.blocking.aclose()
