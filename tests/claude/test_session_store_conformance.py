"""The Postgres transcript store passes the Claude SDK's own SessionStore conformance suite."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

from app.asgi import build_alchemy_config
from app.domain.transcripts.store import PostgresSessionStore
from tests.instances import make_settings
from tests.servers import TestServers

conformance = pytest.importorskip("claude_agent_sdk.testing")


@pytest.fixture
async def alchemy(servers: TestServers) -> AsyncIterator[SQLAlchemyAsyncConfig]:
    config = build_alchemy_config(make_settings(servers, "store"))
    yield config
    await config.get_engine().dispose()


async def test_postgres_store_passes_the_sdk_conformance_suite(alchemy: SQLAlchemyAsyncConfig) -> None:
    # Each contract gets a store of its own namespace: isolation on one shared database.
    await conformance.run_session_store_conformance(
        lambda: PostgresSessionStore(alchemy, namespace=f"conformance-{secrets.token_hex(6)}/")
    )


async def test_duplicate_uuids_are_stored_once(alchemy: SQLAlchemyAsyncConfig) -> None:
    store = PostgresSessionStore(alchemy, namespace=f"dedup-{secrets.token_hex(6)}/")
    key = {"project_key": "p", "session_id": "s"}
    await store.append(key, [{"type": "user", "uuid": "u1", "n": 1}, {"type": "mode"}])
    await store.append(key, [{"type": "user", "uuid": "u1", "n": 1}, {"type": "user", "uuid": "u2"}, {"type": "mode"}])
    assert await store.load(key) == [
        {"type": "user", "uuid": "u1", "n": 1},
        {"type": "mode"},
        {"type": "user", "uuid": "u2"},
        {"type": "mode"},
    ]
