"""SIGTERM on a real Granian process during a run (SPEC §6): the run gets its grace period, is then
interrupted, its stream ends with `done`, and its lease is released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import InstanceFactory
from tests.helpers import collect_sse, iter_sse
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
            assert not await valkey.exists(f"agentapi:{{{sid}}}:active")
            session = (await co.get(f"/api/v1/sessions/{sid}")).json()
            assert session["status"] == "interrupted" and session["active_run"] is None
            async with co.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "after"}) as resp2:
                assert (await collect_sse(resp2))[-1].data == {"reason": "completed"}
    finally:
        proc.kill()
