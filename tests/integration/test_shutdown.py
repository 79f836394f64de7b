"""SIGTERM on a real Granian process during a run (SPEC §6): the run gets its grace period, is then
interrupted, its stream ends with `done`, and its lease is released."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.domain.sessions.valkey_keys import active_key
from tests.helpers import collect_sse, iter_sse, wait_for
from tests.instances import InstanceFactory
from tests.integration.test_runs import next_event, start_stream
from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = pytest.mark.processes


async def test_sigterm_interrupts_runs_after_grace_and_releases_lease(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, tmp_path: Path, valkey: Any
) -> None:
    proc = GranianProcess.start(servers, "terminated", tmp_path, RUN_SHUTDOWN_GRACE="1")
    other = await instance_factory("other")
    try:
        async with (
            httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": api_key}, timeout=30) as cp,
            other.client(api_key) as co,
        ):
            sid = (await co.post("/api/v1/sessions", json={})).json()["id"]
            async with cp.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 60"}) as resp:
                async for ev in iter_sse(resp):
                    if ev.event == "message":
                        break
                async with co.stream("GET", f"/api/v1/sessions/{sid}/events") as follow:
                    proc.terminate()
                    tail = await collect_sse(follow, timeout=20)
            assert tail[-1].data == {"reason": "interrupted"}
            assert not await valkey.exists(active_key(sid))
            session = (await co.get(f"/api/v1/sessions/{sid}")).json()
            assert session["status"] == "interrupted" and session["active_run"] is None
            async with co.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "after"}) as resp2:
                assert (await collect_sse(resp2))[-1].data == {"reason": "completed"}
    finally:
        proc.kill()


async def test_sigterm_to_agent_api_run_drains_while_still_serving(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, tmp_path: Path, valkey: Any
) -> None:
    """The Dockerfile's way: `agent-api run`, SIGTERM to the top process only. During the grace period the
    instance keeps serving reads and refuses new runs with 503; a run that ends within the grace completes; a
    longer one is interrupted and ends with `done`; a stream it served for a run elsewhere ends so the client
    can rejoin; the lease is released and the process exits on its own."""
    proc = GranianProcess.start(servers, "drained", tmp_path, cli=True, RUN_SHUTDOWN_GRACE="3")
    other = await instance_factory("drain-other")
    try:
        async with (
            httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": api_key}, timeout=30) as cp,
            other.client(api_key) as co,
        ):
            long_sid, short_sid, remote_sid = [(await co.post("/api/v1/sessions", json={})).json()["id"] for _ in "123"]
            long_resp, long_events = await start_stream(
                cp, f"/api/v1/sessions/{long_sid}/resume", {"prompt": "sleep 60"}
            )
            short_resp, short_events = await start_stream(
                cp, f"/api/v1/sessions/{short_sid}/resume", {"prompt": "sleep 1.5"}
            )
            remote_resp, _ = await start_stream(co, f"/api/v1/sessions/{remote_sid}/resume", {"prompt": "sleep 60"})
            try:
                await next_event(long_events, "message")
                await next_event(short_events, "message")
                async with (
                    co.stream("GET", f"/api/v1/sessions/{long_sid}/events") as long_follow,
                    cp.stream("GET", f"/api/v1/sessions/{remote_sid}/events") as remote_follow,
                ):
                    remote_iter = iter_sse(remote_follow).__aiter__()
                    await next_event(remote_iter, "message")
                    signalled = time.monotonic()
                    proc.signal_main(signal.SIGTERM)

                    # Still serving, but no new runs.
                    async def refuses_runs() -> bool:
                        resp = await cp.post("/api/v1/query/single", json={"prompt": "new", "session_id": short_sid})
                        return resp.status_code == 503 and resp.json()["code"] == "SHUTTING_DOWN"

                    await wait_for(refuses_runs, timeout=2, interval=0.05, what="new runs refused with 503")
                    read = await cp.get(f"/api/v1/sessions/{long_sid}")
                    assert read.status_code == 200 and read.json()["status"] == "running"
                    # Not ready while draining, so load balancers stop routing here (issue 18 item 7).
                    ready = await cp.get("/health/ready")
                    assert ready.status_code == 503 and ready.json()["status"] == "draining", ready.text
                    assert time.monotonic() - signalled < 3  # all of that inside the grace period

                    short_tail = [ev async for ev in short_events if not ev.comment]
                    assert short_tail[-1].data == {"reason": "completed"}
                    long_tail = await collect_sse(long_follow, timeout=20)
                    assert long_tail[-1].data == {"reason": "interrupted"}
                    assert time.monotonic() - signalled >= 3  # not before the grace period ran out
                    # The stream of a run on the other instance ends (no `done`: that run goes on).
                    rest = [ev async for ev in remote_iter if not ev.comment]
                    assert all(ev.event != "done" for ev in rest)
            finally:
                await long_resp.aclose()
                await short_resp.aclose()
            assert proc.proc.wait(timeout=30) == 0
            assert not await valkey.exists(active_key(long_sid))
            session = (await co.get(f"/api/v1/sessions/{long_sid}")).json()
            assert session["status"] == "interrupted" and session["active_run"] is None
            # The run on the other instance never noticed.
            assert (await co.get(f"/api/v1/sessions/{remote_sid}")).json()["status"] == "running"
            assert (await co.post(f"/api/v1/sessions/{remote_sid}/interrupt")).status_code == 202
            await remote_resp.aclose()
            log = proc.log_path.read_text(errors="replace")
            assert "refused to gracefully stop" not in log, log[-3000:]
    finally:
        proc.kill()
