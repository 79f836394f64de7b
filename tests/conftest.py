"""Fixtures: real Postgres and Valkey (embedded by default), app instances served over real HTTP.

Each test gets fresh API keys, so tests never see each other's sessions and need no cleanup."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from valkey.asyncio import Valkey

from app.asgi import build_alchemy_config
from app.lib import migrations
from tests.instances import Instance, InstanceFactory, create_api_key, make_settings, start_instance
from tests.servers import TestServers


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    srv = TestServers.start()
    settings = make_settings(srv, "migrator")
    migrations.upgrade_sync(build_alchemy_config(settings))
    yield srv
    srv.close()


@pytest.fixture
async def instance_factory(servers: TestServers) -> AsyncIterator[InstanceFactory]:
    started: list[Instance] = []

    async def factory(name: str, **overrides: Any) -> Instance:
        inst = await start_instance(name, make_settings(servers, f"test-{name}-{secrets.token_hex(3)}", **overrides))
        started.append(inst)
        return inst

    yield factory
    for inst in reversed(started):
        await inst.stop()


@pytest.fixture
async def a(instance_factory: InstanceFactory) -> Instance:
    inst: Instance = await instance_factory("a")
    return inst


@pytest.fixture
async def b(instance_factory: InstanceFactory) -> Instance:
    inst: Instance = await instance_factory("b")
    return inst


@pytest.fixture(scope="module")
async def shared_instance(servers: TestServers) -> AsyncIterator[Instance]:
    """One default instance for a whole module: for many small tests that each use their own fresh key."""
    inst = await start_instance("shared", make_settings(servers, f"test-shared-{secrets.token_hex(3)}"))
    yield inst
    await inst.stop()


@pytest.fixture(scope="module")
async def shared_instance_b(servers: TestServers) -> AsyncIterator[Instance]:
    """A second module-wide default instance, for tests that need two (e.g. a write on one, a read on the other)."""
    inst = await start_instance("shared-b", make_settings(servers, f"test-shared-b-{secrets.token_hex(3)}"))
    yield inst
    await inst.stop()


@pytest.fixture
async def api_key(servers: TestServers) -> str:
    return await create_api_key(servers)


@pytest.fixture
async def other_api_key(servers: TestServers) -> str:
    return await create_api_key(servers)


@pytest.fixture
async def valkey(servers: TestServers) -> AsyncIterator[Valkey]:
    client = Valkey.from_url(servers.valkey_url)
    yield client
    await client.aclose()
