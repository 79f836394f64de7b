"""Sessions under faults: Valkey down (Postgres serves), Postgres down (503 quickly), both recover by themselves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from valkey.asyncio import Valkey

from app.domain.sessions.valkey_keys import session_key
from tests.helpers import assert_problem, wait_for
from tests.instances import Instance
from tests.servers import TestServers

pytestmark = pytest.mark.faults
T = TypeVar("T")

API = "/api/v1/sessions"


@pytest.fixture(autouse=True)
def _require_fault_injection(servers: TestServers) -> None:
    if not servers.can_inject_faults:
        pytest.skip("needs the embedded servers (TEST_DATABASE_URL / TEST_VALKEY_URL point at external ones)")


async def timed(call: Awaitable[T], limit: float) -> T:
    """The result, which must come back within `limit` seconds (a fault must not make requests hang)."""
    started = time.monotonic()
    resp = await asyncio.wait_for(call, limit)
    elapsed = time.monotonic() - started
    assert elapsed < limit, elapsed
    return resp


async def valkey_ready(valkey: Valkey) -> bool:
    try:
        return bool(await valkey.ping())
    except Exception:
        return False


async def test_sessions_work_from_postgres_while_valkey_is_down_and_recover(
    servers: TestServers, a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb, a.client() as anon:
        before = (await ca.post(API, json={"title": "before the outage", "tags": ["keep"]})).json()
        sid = before["id"]
        servers.stop_valkey()
        try:
            ready = await timed(anon.get("/health/ready"), 10)
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["valkey"]["status"] == "down"
            assert ready.json()["checks"]["postgres"]["status"] == "up"
            assert (await anon.get("/health/live")).json() == {"status": "ok"}

            got = await timed(cb.get(f"{API}/{sid}"), 10)
            assert got.status_code == 200, got.text
            assert got.json() == before

            created = await timed(ca.post(API, json={"title": "during the outage"}), 10)
            assert created.status_code == 201, created.text
            new_sid = created.json()["id"]
            assert (await timed(cb.get(f"{API}/{new_sid}"), 10)).json()["title"] == "during the outage"

            listed = await timed(cb.get(API, params={"tag": "keep"}), 10)
            assert listed.status_code == 200
            assert [s["id"] for s in listed.json()["items"]] == [sid]

            patched = await timed(cb.patch(f"{API}/{sid}", json={"title": "patched in the outage"}), 10)
            assert patched.status_code == 200, patched.text
            assert patched.json()["version"] == 2
            conflict = await timed(ca.patch(f"{API}/{sid}", json={"title": "x"}, headers={"If-Match": '"1"'}), 10)
            assert_problem(conflict, 412, "VERSION_CONFLICT")
            assert (await timed(ca.get(f"{API}/{sid}"), 10)).json()["title"] == "patched in the outage"

            # Without the lock, concurrent writers are still fenced: none lost, none refused.
            writes = await timed(
                asyncio.gather(
                    *((ca if n % 2 else cb).patch(f"{API}/{sid}", json={"metadata": {"n": n}}) for n in range(10))
                ),
                15,
            )
            assert [w.status_code for w in writes] == [200] * 10, [w.text for w in writes]
            assert sorted(w.json()["version"] for w in writes) == list(range(3, 13))
            assert (await ca.get(f"{API}/{sid}")).json()["version"] == 12

            forked = await timed(ca.post(f"{API}/{sid}/fork", json={}), 10)
            assert forked.status_code == 201, forked.text
            assert (await timed(ca.get(f"{API}/{sid}/messages"), 10)).json()["total"] == 0

            deleted = await timed(ca.delete(f"{API}/{new_sid}"), 10)
            assert deleted.status_code == 204, deleted.text
            assert_problem(await timed(cb.get(f"{API}/{new_sid}"), 10), 404, "SESSION_NOT_FOUND")
        finally:
            servers.start_valkey()

        await wait_for(lambda: valkey_ready(valkey), timeout=15, what="Valkey back")

        async def ready_ok() -> bool:
            resp = await anon.get("/health/ready")
            return resp.status_code == 200 and resp.json()["status"] == "ok"

        await wait_for(ready_ok, timeout=15, what="/health/ready ok again")

        # No stale cache survives the outage: reads show the newest version and re-cache it.
        got = await cb.get(f"{API}/{sid}")
        assert got.json()["version"] == 12
        assert got.headers["etag"] == '"12"'

        async def recached() -> dict[str, Any] | None:
            raw = await valkey.get(session_key(sid))
            return json.loads(raw) if raw else None

        entry = await wait_for(recached, timeout=5, what="session re-cached")
        assert entry is not None
        assert entry["version"] == 12

        # Writes take the lock again and keep the cache current, on both instances, without a restart.
        after = await ca.patch(f"{API}/{sid}", json={"title": "after the outage"})
        assert after.status_code == 200
        assert after.json()["version"] == 13
        entry = await recached()
        assert entry is not None
        assert entry["version"] == 13
        assert (await cb.get(f"{API}/{sid}")).json()["title"] == "after the outage"
        created = await ca.post(API, json={})
        assert created.status_code == 201
        assert await valkey.exists(session_key(created.json()["id"]))


async def test_postgres_down_gives_503_quickly_and_recovers(
    servers: TestServers, a: Instance, b: Instance, api_key: str, other_api_key: str, valkey: Valkey
) -> None:
    unseen_key = other_api_key
    async with a.client(api_key) as ca, b.client(api_key) as cb, a.client() as anon:
        cached_sid = (await ca.post(API, json={"title": "cached"})).json()["id"]
        uncached_sid = (await ca.post(API, json={"title": "uncached"})).json()["id"]
        # Both instances know the key (the auth cache) so the requests below reach the session code.
        assert (await cb.get(API)).status_code == 200
        await valkey.delete(session_key(uncached_sid))

        servers.stop_postgres()
        try:
            requests: list[tuple[str, Callable[[], Awaitable[httpx.Response]]]] = [
                ("create", lambda: ca.post(API, json={"title": "no db"})),
                ("list", lambda: cb.get(API)),
                ("get uncached", lambda: ca.get(f"{API}/{uncached_sid}")),
                ("patch", lambda: cb.patch(f"{API}/{cached_sid}", json={"title": "no db"})),
                ("delete", lambda: ca.delete(f"{API}/{uncached_sid}")),
                ("fork", lambda: cb.post(f"{API}/{uncached_sid}/fork", json={})),
            ]
            for what, call in requests:
                resp = await timed(call(), 10)
                body = assert_problem(resp, 503, "DATABASE_UNAVAILABLE")
                assert resp.headers.get("retry-after", "").isdigit(), (what, resp.headers)
                assert body["detail"], what

            # A key this instance has not seen yet cannot be checked: that is the database's fault, not a 401.
            async with a.client(unseen_key) as unseen:
                assert_problem(await timed(unseen.get(API), 10), 503, "DATABASE_UNAVAILABLE")

            ready = await timed(anon.get("/health/ready"), 10)
            assert ready.status_code == 503
            assert ready.json()["status"] == "unavailable"
            assert ready.json()["checks"]["postgres"]["status"] == "down"
            assert ready.json()["checks"]["valkey"]["status"] == "up"
            assert (await timed(anon.get("/health/live"), 5)).status_code == 200

            # A cached session is still served from Valkey.
            hit = await timed(cb.get(f"{API}/{cached_sid}"), 10)
            assert hit.status_code == 200
            assert hit.json()["title"] == "cached"
        finally:
            servers.start_postgres()

        async def ready_ok() -> bool:
            return (await anon.get("/health/ready")).status_code == 200

        await wait_for(ready_ok, timeout=20, what="/health/ready 200 again")

        async def creates() -> bool:
            return (await ca.post(API, json={"title": "back"})).status_code == 201

        await wait_for(creates, timeout=20, what="creates work again")
        for client in (ca, cb):
            got = await client.get(f"{API}/{uncached_sid}")
            assert got.status_code == 200
            assert got.json()["title"] == "uncached"
            page = await client.get(API)
            assert page.status_code == 200
            assert page.json()["total"] == 3
        patched = await cb.patch(f"{API}/{cached_sid}", json={"title": "patched after"})
        assert patched.status_code == 200
        assert patched.json()["version"] == 2


async def test_creates_after_the_database_dropped_every_pooled_connection_fail_once_at_most(
    servers: TestServers, instance_factory: Any, api_key: str
) -> None:
    """The create's INSERT runs on a pooled connection's driver, past SQLAlchemy's disconnect handling: when
    Postgres drops the connections (a restart, an operator's pg_terminate_backend), the first create that finds one
    dead replaces the whole pool, as SQLAlchemy does, so the next ones do not each find another."""
    instance: Instance = await instance_factory("pool-drop")
    engine = instance.components.alchemy.get_engine()
    pooled = [await engine.raw_connection() for _ in range(5)]  # five connections in the pool, fresh (no ping)
    pids = [await conn.driver_connection.fetchval("SELECT pg_backend_pid()") for conn in pooled]  # type: ignore[union-attr]
    for conn in pooled:
        conn.close()
    admin = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert all(await admin.fetch("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids))
    finally:
        await admin.close()
    async with instance.client(api_key) as client:
        statuses = [(await client.post(API, json={"title": "after the drop"})).status_code for _ in range(5)]
    assert statuses.count(201) >= 4, statuses
    assert set(statuses) <= {201, 503}, statuses
