"""Issue 18 items 6 and 7: readiness while Postgres is down at startup, and during the SIGTERM drain."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from app.lifespan import AppLifespan
from tests.helpers import iter_sse, wait_for
from tests.instances import InstanceFactory
from tests.servers import TestServers

API = "/api/v1/sessions"


@pytest.mark.faults
@pytest.mark.parametrize("migrate", [False, True], ids=["bootstrap-key", "migrations-and-bootstrap-key"])
async def test_starts_while_postgres_is_down_and_becomes_ready_by_itself(
    servers: TestServers, instance_factory: InstanceFactory, migrate: bool
) -> None:
    if not servers.can_inject_faults:
        pytest.skip("needs the embedded servers")
    bootstrap = f"boot-{secrets.token_hex(16)}"
    servers.stop_postgres()
    try:
        inst = await asyncio.wait_for(
            instance_factory("pg-down", app__api_key=bootstrap, db__migrate_on_startup=migrate), 30
        )
        async with inst.client() as anon:
            assert (await anon.get("/health/live")).status_code == 200
            ready = await anon.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] != "ok"
    finally:
        servers.start_postgres()
    async with inst.client() as anon, inst.client(bootstrap) as c:

        async def ready() -> bool:
            return (await anon.get("/health/ready")).status_code == 200

        await wait_for(ready, timeout=30, interval=0.2, what="the instance to become ready by itself")
        # Ready means usable: the bootstrap key was ensured in the background.
        listed = await c.get(API)
        assert listed.status_code == 200, listed.text


async def test_ready_is_503_draining_during_the_shutdown_drain(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory("draining", runs__shutdown_grace=5.0)
    lifespan = AppLifespan(inst.components)
    async with inst.client(api_key) as c, inst.client() as anon:
        assert (await anon.get("/health/ready")).status_code == 200
        sid = (await c.post(API, json={})).json()["id"]
        async with c.stream("POST", f"{API}/{sid}/resume", json={"prompt": "sleep 30"}) as resp:
            async for ev in iter_sse(resp):
                if ev.event == "message":
                    break
            drain = asyncio.create_task(lifespan.drain())  # what SIGTERM runs first (app.lib.compat.granian_signals)
            try:

                async def draining() -> bool:
                    r = await anon.get("/health/ready")
                    return r.status_code == 503 and r.json()["status"] == "draining"

                await wait_for(draining, timeout=10, what="/health/ready to say draining")
                assert (await c.post(f"{API}/{sid}/resume", json={"prompt": "x"})).status_code in (409, 503)
            finally:
                await asyncio.wait_for(drain, 30)
        r = await anon.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert (await anon.get("/health/live")).status_code == 200


async def test_a_stopped_instance_leaves_no_database_connection_behind(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str
) -> None:
    """Advanced-Alchemy's lifespan disposes the engine before ours stops the runs, so the app disposes it again
    last; before, every stopped instance left its pool's connections open (the suite ran Postgres out of them)."""

    async def client_backends() -> int:
        conn = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            return count
        finally:
            await conn.close()

    before = await client_backends()
    inst = await instance_factory("leak")
    async with inst.client(api_key) as c:
        sid = (await c.post(API, json={})).json()["id"]
        run = (await c.post(f"{API}/{sid}/runs", json={"prompt": "hello"})).json()
        assert (await c.get(f"/api/v1/runs/{run['id']}/wait")).json()["status"] == "completed"
    assert await client_backends() > before  # it did hold connections
    await inst.stop()

    async def released() -> bool:
        return await client_backends() <= before

    await wait_for(released, timeout=10, what="the stopped instance's connections closed")
