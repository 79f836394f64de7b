"""Issue 18 #2: a live run holds no database connection while it waits for its agent, so one instance runs
many more concurrent runs than its pool has connections; pool exhaustion anywhere is a 503, never a 500."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import assert_problem, collect_sse
from tests.instances import InstanceFactory


async def test_many_more_concurrent_runs_than_pool_connections(instance_factory: InstanceFactory, api_key: str) -> None:
    # 4 connections in all: before the fix every live /query held one, so the fifth failed with a 500.
    inst = await instance_factory("small-pool", db__pool_size=2, db__max_overflow=2)
    runs = 40

    async with inst.client(api_key) as client:
        client.timeout = httpx.Timeout(120)

        async def one(i: int) -> list[str]:
            async with client.stream("POST", "/api/v1/query", json={"prompt": "sleep 2"}) as resp:
                assert resp.status_code == 200, await resp.aread()
                events = await collect_sse(resp, timeout=110)
            return [e.event for e in events]

        results = await asyncio.gather(*(one(i) for i in range(runs)))
        assert all(names[-1] == "done" and "error" not in names for names in results)
        listed = (await client.get("/api/v1/sessions", params={"limit": 100})).json()
        assert listed["total"] == runs
        assert all(s["status"] == "completed" for s in listed["items"])


async def test_a_run_that_cannot_start_leaves_no_session_behind(
    instance_factory: InstanceFactory, api_key: str
) -> None:
    """With Valkey unreachable a /query without session_id is a 503, and no idle session is left."""
    inst = await instance_factory("no-valkey", valkey__url="redis://127.0.0.1:1/0", valkey__connect_timeout=0.2)
    async with inst.client(api_key) as client:
        resp = await client.post("/api/v1/query", json={"prompt": "hello"})
        assert_problem(resp, 503, "VALKEY_UNAVAILABLE")
        assert resp.headers["retry-after"]
        assert (await client.get("/api/v1/sessions")).json()["total"] == 0


async def test_pool_exhaustion_is_503_not_500(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory("one-conn", db__pool_size=1, db__max_overflow=0, db__pool_timeout=1.0)
    engine = inst.app.state["alchemy_config"].get_engine()
    async with inst.client(api_key) as client:
        sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
        # Hold the only connection, then ask for a cache miss that needs one.
        async with engine.connect() as held:
            await held.exec_driver_sql("SELECT 1")
            resp = await client.get("/api/v1/sessions", params={"limit": 5})
        body = assert_problem(resp, 503, "DATABASE_UNAVAILABLE")
        assert resp.headers["retry-after"], body
        assert (await client.get(f"/api/v1/sessions/{sid}")).status_code == 200
        assert isinstance(resp, httpx.Response)
