"""App instances for tests: settings pointed at the test servers, an instance served by uvicorn in the test's
event loop, and API keys created straight in the database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from litestar import Litestar

from app.asgi import build_alchemy_config, create_app
from app.components import AppComponents
from app.config.settings import (
    AppSettings,
    ClaudeSettings,
    DatabaseSettings,
    RunSettings,
    SessionSettings,
    Settings,
    ValkeySettings,
    WebhookSettings,
)
from app.domain.keys.services import ApiKeyService
from tests.servers import TestServers, free_port


def make_settings(servers: TestServers, instance_id: str, **overrides: Any) -> Settings:
    """Settings for one app instance; `overrides` are `section__field=value` (e.g. runs__lease_ttl_ms=3000)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        section, _, fld = name.partition("__")
        sections.setdefault(section, {})[fld] = value
    return Settings(
        app=dataclasses.replace(
            AppSettings(),
            # Every test talks from 127.0.0.1 through one Valkey: the failed-authentication limit (per address,
            # across instances) is off unless a test asks for it (tests/integration/test_auth_failures.py).
            **{"instance_id": instance_id, "api_key": "", "auth_failures_per_minute": 0, **sections.get("app", {})},
        ),
        db=dataclasses.replace(
            DatabaseSettings(),
            **{"url": servers.database_url, "migrate_on_startup": False, **sections.get("db", {})},
        ),
        valkey=dataclasses.replace(
            ValkeySettings(),
            **{"url": servers.valkey_url, "cluster": servers.valkey_cluster, **sections.get("valkey", {})},
        ),
        # No startup cache warming unless a test asks for it: instances start all the time here.
        sessions=dataclasses.replace(SessionSettings(), **{"cache_warm_count": 0, **sections.get("sessions", {})}),
        runs=dataclasses.replace(RunSettings(), **sections.get("runs", {})),
        claude=dataclasses.replace(ClaudeSettings(), **sections.get("claude", {})),
        webhooks=dataclasses.replace(WebhookSettings(), **sections.get("webhooks", {})),
    )


@dataclass
class Instance:
    """One app instance served by uvicorn on a loopback port, in the test's event loop."""

    name: str
    app: Litestar
    base_url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def components(self) -> AppComponents:
        """The instance's app-level objects (run manager, reaper, ...), for tests that look inside."""
        components: AppComponents = self.app.state["components"]
        return components

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"X-API-Key": key} if key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30.0, **kwargs)

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 15)


async def start_instance(name: str, settings: Settings) -> Instance:
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # the app resolves X-Forwarded-For itself (TRUSTED_PROXIES), as under Granian
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 20
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"instance {name} exited during startup")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"instance {name} did not start")
        await asyncio.sleep(0.01)
    return Instance(name=name, app=app, base_url=f"http://127.0.0.1:{port}", server=server, task=task)


InstanceFactory = Callable[..., Any]


async def create_api_key(servers: TestServers, name: str | None = None) -> str:
    config = build_alchemy_config(make_settings(servers, "keys"))
    try:
        async with config.get_session() as db:
            _, plaintext = await ApiKeyService(session=db).create_key(name or f"test-{secrets.token_hex(6)}")
    finally:
        await config.get_engine().dispose()
    return plaintext
