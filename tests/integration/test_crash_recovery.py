"""An instance dies mid-run (SIGKILL of a real Granian process): its lease lapses, another instance's
reaper marks the session `error`, followers get `error RUN_LOST` and `done`, and the session runs again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from app.domain.sessions.valkey_keys import active_key
from tests.helpers import collect_sse, iter_sse, wait_for
from tests.instances import InstanceFactory
from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = pytest.mark.processes

FAST_LEASE = {"RUN_LEASE_TTL_MS": "2000", "RUN_LEASE_RENEW_INTERVAL": "0.5"}


async def test_killed_instance_run_is_reaped_and_session_resumes(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, tmp_path: Path
) -> None:
    doomed = GranianProcess.start(servers, "doomed", tmp_path, **FAST_LEASE)
    survivor = await instance_factory("survivor", runs__reaper_interval=0.3, runs__lease_renew_interval=0.5)
    try:
        headers = {"X-API-Key": api_key}
        async with (
            httpx.AsyncClient(base_url=doomed.base_url, headers=headers, timeout=30) as cd,
            survivor.client(api_key) as cs,
        ):
            sid = (await cs.post("/api/v1/sessions", json={})).json()["id"]
            async with cd.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 60"}) as resp:
                assert resp.status_code == 200
                events = iter_sse(resp).__aiter__()
                init: Any = None
                async for ev in events:
                    if ev.event == "init":
                        init = ev
                    if ev.event == "message":
                        break
                assert init is not None
                assert (await cs.get(f"/api/v1/sessions/{sid}")).json()["active_run"]["instance_id"] == "doomed"
                # A follower on the survivor, then the owner dies.
                async with cs.stream(
                    "GET", f"/api/v1/sessions/{sid}/events", headers={"Last-Event-ID": init.id}
                ) as follow:
                    doomed.kill()
                    tail = await collect_sse(follow, timeout=30)
            assert [e.event for e in tail][-2:] == ["error", "done"]
            assert tail[-2].data["code"] == "RUN_LOST"
            assert tail[-1].data == {"reason": "error"}

            async def errored() -> bool:
                return bool((await cs.get(f"/api/v1/sessions/{sid}")).json()["status"] == "error")

            await wait_for(errored, timeout=10, what="session marked error")
            session = (await cs.get(f"/api/v1/sessions/{sid}")).json()
            assert session["active_run"] is None
            msgs = (await cs.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1000})).json()["items"]
            assert [m["event"] for m in msgs][-2:] == ["error", "done"]

            async with cs.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "again"}) as resp2:
                again = await collect_sse(resp2)
            assert again[-1].data == {"reason": "completed"}
    finally:
        doomed.kill()


async def test_a_dead_owners_session_is_busy_until_reaped_never_run_twice(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, tmp_path: Path, valkey: Any
) -> None:
    """The lease lapsing is not enough to start a new run: Postgres still has the lost run active until a
    reaper ends it (with `error RUN_LOST` and `done`), so no second run overlaps it."""
    doomed = GranianProcess.start(servers, "doomed2", tmp_path, **FAST_LEASE)
    other = await instance_factory("other", runs__reaper_interval=3600)
    try:
        async with (
            httpx.AsyncClient(base_url=doomed.base_url, headers={"X-API-Key": api_key}, timeout=30) as cd,
            other.client(api_key) as co,
        ):
            sid = (await co.post("/api/v1/sessions", json={})).json()["id"]
            async with cd.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 60"}) as resp:
                async for ev in iter_sse(resp):
                    if ev.event == "message" and ev.data["role"] == "assistant":
                        break
                doomed.kill()

            async def lease_gone() -> bool:
                return not await valkey.exists(active_key(sid))

            await wait_for(lease_gone, timeout=10, what="the lease to lapse")
            busy = await co.post(f"/api/v1/sessions/{sid}/resume", json={"prompt": "fresh"})
            assert busy.status_code == 409 and busy.json()["code"] == "SESSION_BUSY"
            # A reaper (here: the other instance's, run once by hand) ends the lost run; then the session runs.
            await wait_for(other.components.run_reaper.sweep, timeout=20, interval=0.2, what="the lost run reaped")
            async with co.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "fresh"}) as resp2:
                assert resp2.status_code == 200
                fresh = await collect_sse(resp2)
            assert fresh[-1].data == {"reason": "completed"}
            msgs = (await co.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1000})).json()["items"]
            lost = [m for m in msgs if m["run_id"] != fresh[0].data["run_id"]]
            assert [m["event"] for m in lost][-2:] == ["error", "done"]
            assert (await co.get(f"/api/v1/sessions/{sid}")).json()["status"] == "completed"
    finally:
        doomed.kill()
