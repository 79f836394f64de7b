"""The key paths across two real Granian processes sharing Postgres and Valkey."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import collect_sse, iter_sse
from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = pytest.mark.processes


@pytest.fixture
def two_processes(servers: TestServers, tmp_path: Path) -> Iterator[tuple[GranianProcess, GranianProcess]]:
    first = GranianProcess.start(servers, "proc-1", tmp_path)
    second = GranianProcess.start(servers, "proc-2", tmp_path)
    yield first, second
    first.kill()
    second.kill()


async def test_run_on_one_process_controlled_from_the_other(
    two_processes: tuple[GranianProcess, GranianProcess], api_key: str
) -> None:
    p1, p2 = two_processes
    headers = {"X-API-Key": api_key}
    async with (
        httpx.AsyncClient(base_url=p1.base_url, headers=headers, timeout=30) as c1,
        httpx.AsyncClient(base_url=p2.base_url, headers=headers, timeout=30) as c2,
    ):
        sid = (await c1.post("/api/v1/sessions", json={"title": "procs"})).json()["id"]
        assert (await c2.get(f"/api/v1/sessions/{sid}")).json()["title"] == "procs"

        # Answer from the other process.
        async with c1.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "ask ready?"}) as resp:
            seen = []
            async for ev in iter_sse(resp):
                if ev.comment:
                    continue
                seen.append(ev)
                if ev.event == "question":
                    answered = await c2.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "yes"})
                    assert answered.status_code == 200, answered.text
                if ev.event == "done":
                    break
        assert seen[-2].data["result"] == "Answer: yes"

        # Busy from the other process, rejoin there, interrupt from there.
        async with c1.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 30"}) as resp:
            async for ev in iter_sse(resp):
                if ev.event == "message":
                    break
            busy = await c2.post("/api/v1/query", json={"prompt": "x", "session_id": sid})
            assert busy.status_code == 409 and busy.json()["code"] == "SESSION_BUSY"
            async with c2.stream("GET", f"/api/v1/sessions/{sid}/events") as follow:
                started = time.perf_counter()
                assert (await c2.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
                rejoined = await collect_sse(follow, timeout=10)
                elapsed = time.perf_counter() - started
        assert rejoined[0].event == "init"
        assert rejoined[-1].data == {"reason": "interrupted"}
        assert elapsed < 1.0
        session = (await c2.get(f"/api/v1/sessions/{sid}")).json()
        assert session["status"] == "interrupted" and session["active_run"] is None


async def test_an_oversized_body_gets_its_413_and_the_connection_stays_usable(
    servers: TestServers, tmp_path: Path, api_key: str
) -> None:
    """Under Granian: a body over the limit is read and dropped before the 413 ends, so a client still uploading
    gets the 413 (not a reset) and its keep-alive connection serves the next request. Before, the second upload
    on a connection failed with a read error."""
    proc = GranianProcess.start(servers, "proc-413", tmp_path)
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": api_key}, timeout=30) as c:
            for _ in range(5):
                resp = await c.post(
                    "/api/v1/sessions", content=b"x" * (4 * 1024 * 1024), headers={"Content-Type": "application/json"}
                )
                assert resp.status_code == 413
                assert resp.json()["code"] == "REQUEST_TOO_LARGE"
                assert (await c.get("/api/v1/sessions")).status_code == 200
    finally:
        proc.kill()
