"""Runs under Valkey faults (SPEC §6): down → 503 VALKEY_UNAVAILABLE, no split brain; back → runs work;
flushed mid-run → the owner re-takes its lease and the run completes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from app.domain.sessions.valkey_keys import active_key
from tests.helpers import collect_sse, iter_sse, wait_for
from tests.instances import Instance, InstanceFactory
from tests.servers import TestServers

pytestmark = pytest.mark.faults


async def runs_work_again(client: httpx.AsyncClient, sid: str) -> None:
    async def run_works() -> bool:
        resp = await client.post("/api/v1/query/single", json={"prompt": "back", "session_id": sid})
        return resp.status_code == 200 and resp.json()["result"] == "Echo: back"

    await wait_for(run_works, timeout=15, interval=0.2, what="runs to work again after Valkey returned")


@pytest.fixture(autouse=True)
def _needs_embedded(servers: TestServers) -> None:
    if not servers.can_inject_faults:
        pytest.skip("fault injection needs the embedded servers")


async def test_runs_answer_503_while_valkey_is_down_and_recover(
    servers: TestServers, a: Instance, api_key: str
) -> None:
    async with a.client(api_key) as client:
        sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
        servers.stop_valkey()
        try:
            started = time.perf_counter()
            for method, path, body in (
                ("POST", "/api/v1/query", {"prompt": "hi"}),
                ("POST", "/api/v1/query", {"prompt": "hi", "session_id": sid}),
                ("POST", f"/api/v1/sessions/{sid}/resume", {"prompt": "hi"}),
                ("POST", "/api/v1/query/single", {"prompt": "hi"}),
                ("POST", f"/api/v1/sessions/{sid}/interrupt", None),
                ("POST", f"/api/v1/sessions/{sid}/answer", {"answer": "x"}),
            ):
                resp = await client.request(method, path, json=body)
                assert resp.status_code == 503, (path, resp.status_code, resp.text)
                assert resp.json()["code"] == "VALKEY_UNAVAILABLE"
                assert int(resp.headers["retry-after"]) > 0
            assert time.perf_counter() - started < 10
            # Reads still work from Postgres, and no session was left `running`.
            got = await client.get(f"/api/v1/sessions/{sid}")
            assert got.status_code == 200 and got.json()["status"] == "idle"
            listing = (await client.get("/api/v1/sessions")).json()
            assert all(item["status"] != "running" for item in listing["items"])
        finally:
            servers.start_valkey()

        await runs_work_again(client, sid)


async def test_a_hung_valkey_is_503_for_runs_not_a_hang(servers: TestServers, a: Instance, api_key: str) -> None:
    """Valkey stopped with SIGSTOP accepts connections and never answers: every command is bounded (2 s), so
    runs are refused with 503 like with a dead Valkey, and session reads are served from Postgres."""
    async with a.client(api_key) as client:
        sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
        servers.pause_valkey()
        try:
            for method, path, body in (
                ("POST", "/api/v1/query/single", {"prompt": "hi"}),
                ("POST", f"/api/v1/sessions/{sid}/resume", {"prompt": "hi"}),
                ("POST", f"/api/v1/sessions/{sid}/interrupt", None),
            ):
                started = time.perf_counter()
                resp = await client.request(method, path, json=body)
                elapsed = time.perf_counter() - started
                assert resp.status_code == 503, (path, resp.status_code, resp.text)
                assert resp.json()["code"] == "VALKEY_UNAVAILABLE" and int(resp.headers["retry-after"]) > 0
                assert elapsed < 10, (path, elapsed)  # bounded, not "until Valkey comes back"
            started = time.perf_counter()
            got = await client.get(f"/api/v1/sessions/{sid}")
            assert got.status_code == 200 and got.json()["status"] == "idle"
            # One bound (2 s) for the cache GET; the read neither asks Valkey again nor tries to re-cache.
            assert time.perf_counter() - started < 3.5
        finally:
            servers.resume_valkey()

        await runs_work_again(client, sid)


async def test_flush_mid_run_does_not_lose_the_run(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, valkey: Any
) -> None:
    owner = await instance_factory("owner", runs__lease_renew_interval=0.3, runs__reaper_interval=0.2)
    watcher = await instance_factory("watcher", runs__lease_renew_interval=0.3, runs__reaper_interval=0.2)
    async with owner.client(api_key) as co, watcher.client(api_key) as cw:
        sid = (await co.post("/api/v1/sessions", json={})).json()["id"]
        async with co.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 2.5"}) as resp:
            events = []
            flushed = False
            async for ev in iter_sse(resp):
                if ev.comment:
                    continue
                events.append(ev)
                if ev.event == "message" and not flushed:
                    await valkey.flushall()
                    flushed = True
                if ev.event == "done":
                    break
        assert events[-1].data == {"reason": "completed"}
        assert not any(e.event == "error" for e in events)
        session = (await cw.get(f"/api/v1/sessions/{sid}")).json()
        assert session["status"] == "completed"
        # The lease was re-taken by its owner (not reaped), so the session can run again at once.
        async with cw.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "next"}) as resp2:
            assert (await collect_sse(resp2))[-1].data == {"reason": "completed"}


async def test_sse_ping_after_silence(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory("pinger", runs__ping_interval=0.3)
    async with inst.client(api_key) as client:
        async with client.stream("POST", "/api/v1/query", json={"prompt": "ask anyone there?"}) as resp:
            pings = 0
            question = None
            async for ev in iter_sse(resp):
                if ev.event == "question":
                    question = ev
                if ev.comment and ev.data == "ping":
                    pings += 1
                    if pings == 2:
                        break
            assert question is not None
            sid = question.id and (await client.get("/api/v1/sessions")).json()["items"][0]["id"]
            await client.post(f"/api/v1/sessions/{sid}/interrupt")
        assert pings == 2


@pytest.mark.parametrize("server", ["valkey", "postgres"])
async def test_stream_survives_a_short_outage_mid_run(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, server: str
) -> None:
    """Found by the chaos suite: a Valkey or Postgres restart while a client followed a run aborted the HTTP
    response mid-stream (no `done`). The stream now waits the outage out with pings and ends with `done`."""
    inst = await instance_factory("outage", runs__lease_renew_interval=0.3, runs__ping_interval=0.3)
    stop, start = (
        (servers.stop_valkey, servers.start_valkey)
        if server == "valkey"
        else (servers.stop_postgres, servers.start_postgres)
    )
    async with inst.client(api_key) as client:
        sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
        async with client.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 2"}) as resp:
            events = []
            outage_done = False
            async for ev in iter_sse(resp):
                if ev.comment:
                    continue
                events.append(ev)
                if ev.event == "message" and not outage_done:
                    outage_done = True
                    await asyncio.to_thread(stop)
                    try:
                        # Long enough for several blocking reads and status checks to fail.
                        await asyncio.sleep(1.5)
                    finally:
                        await asyncio.to_thread(start)
                if ev.event == "done":
                    break
        assert events[-1].event == "done", [e.event for e in events]

        async def finished() -> bool:
            return bool((await client.get(f"/api/v1/sessions/{sid}")).json()["status"] != "running")

        await wait_for(finished, timeout=30, what="the run to finish")


async def test_run_keeps_its_lease_while_finishing_through_a_postgres_outage(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, valkey: Any
) -> None:
    """Found by the chaos suite: the lease was no longer renewed once the agent finished, so a run whose final
    commit waited out a Postgres outage longer than the lease TTL lost its lease; followers then saw "no lease,
    status final" before `done` was appended and closed the stream without `done` (and the session was
    open to a second run while the first still finished)."""
    inst = await instance_factory(
        "finisher",
        runs__lease_ttl_ms=1000,
        runs__lease_renew_interval=0.2,
        runs__reaper_interval=3600,
        runs__ping_interval=0.2,
    )
    async with inst.client(api_key) as client:
        sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
        lease_key = active_key(sid)
        async with client.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 1"}) as resp:
            events = []
            outage = False
            async for ev in iter_sse(resp):
                if ev.comment:
                    continue
                events.append(ev)
                if ev.event == "message" and not outage:
                    # Postgres goes away before the agent ends (in ~0.9 s), so the run's final commit has to wait
                    # for it, well past the lease TTL.
                    outage = True
                    await asyncio.to_thread(servers.stop_postgres)
                    try:
                        await asyncio.sleep(3)
                        assert await valkey.exists(lease_key), "the finishing run let its lease lapse"
                    finally:
                        await asyncio.to_thread(servers.start_postgres)
                if ev.event == "done":
                    break
        assert [e.event for e in events][-2:] == ["result", "done"], [e.event for e in events]
        assert events[-1].data == {"reason": "completed"}

        async def completed() -> bool:
            return bool((await client.get(f"/api/v1/sessions/{sid}")).json()["status"] == "completed")

        await wait_for(completed, timeout=30, what="the run's final status")
        assert not await valkey.exists(lease_key)
