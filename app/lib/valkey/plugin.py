"""`ValkeyPlugin`: owns the shared Valkey clients for the app's life (they reach handlers through `AppComponents`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol

from app.lib.valkey.client import ValkeyClients


@dataclass
class ValkeyPluginConfig:
    url: str
    socket_timeout: float = 2.0
    connect_timeout: float = 1.0
    max_connections: int = 2000
    cluster: bool = False
    """`url` names one node of a Valkey Cluster (SPEC §11)."""


class ValkeyPlugin(InitPluginProtocol):
    """Clients connect lazily, so building the app (e.g. in the CLI) opens nothing; shutdown closes them."""

    def __init__(self, config: ValkeyPluginConfig) -> None:
        self.config = config
        self.clients = ValkeyClients.from_url(
            config.url,
            socket_timeout=config.socket_timeout,
            connect_timeout=config.connect_timeout,
            max_connections=config.max_connections,
            cluster=config.cluster,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.clients.aclose()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        # Left after the lifespans registered later (the app's own): they still use the clients on the way out.
        app_config.lifespan.append(self.lifespan)
        return app_config
