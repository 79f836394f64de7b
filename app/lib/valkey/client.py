"""The shared Valkey clients, owned by `ValkeyPlugin` (opened and closed in the app lifespan)."""

from __future__ import annotations

from dataclasses import dataclass

from valkey.asyncio import Valkey


@dataclass
class ValkeyClients:
    """`main` carries every short command; `blocking` carries XREAD BLOCK / BLPOP, which must not be
    cut off by the short socket timeout that lets `main` notice a dead server quickly."""

    main: Valkey
    blocking: Valkey

    @classmethod
    def from_url(
        cls, url: str, *, socket_timeout: float, connect_timeout: float, max_connections: int
    ) -> ValkeyClients:
        main = Valkey.from_url(
            url,
            socket_timeout=socket_timeout,
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
        return cls(main=main, blocking=blocking)

    async def aclose(self) -> None:
        await self.main.aclose()
        await self.blocking.aclose()
