"""Crash detection with default settings (SPEC §6: within 15 s of a SIGKILL) and queues that outlive the
instance that accepted or ran them, with real Granian processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import iter_sse, wait_for
from tests.instances import InstanceFactory
from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = pytest.mark.processes

DETECTION_DEADLINE = 15.0


async def test_sigkill_is_detected_within_15_s_and_the_queue_moves_on(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, tmp_path: Path
) -> None:
    doomed = GranianProcess.start(servers, "doomed-default", tmp_path)  # default lease, presence and reaper
    survivor = await instance_factory("survivor-default")
    try:
        async with (
            httpx.AsyncClient(base_url=doomed.base_url, headers={"X-API-Key": api_key}, timeout=30) as cd,
            survivor.client(api_key) as cs,
        ):
            sid = (await cs.post("/api/v1/sessions", json={})).json()["id"]
            run = (await cd.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "sleep 120"})).json()
            queued = (
                await cd.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "next", "if_busy": "enqueue"})
            ).json()
            assert run["status"] == "running" and queued["status"] == "queued"
            async with cs.stream("GET", f"/api/v1/runs/{run['id']}/events") as follow:
                events = iter_sse(follow).__aiter__()
                async for ev in events:
                    if ev.event == "message" and ev.data["role"] == "assistant":
                        break
                doomed.kill()
                killed_at = time.monotonic()
                tail = []
                async for ev in events:
                    if not ev.comment:
                        tail.append(ev)
                    if ev.event == "done":
                        break
                detected = time.monotonic() - killed_at
            assert [e.event for e in tail][-2:] == ["error", "done"]
            assert tail[-2].data["code"] == "RUN_LOST"
            assert detected <= DETECTION_DEADLINE, detected
            print(f"crash detected {detected:.2f} s after SIGKILL")
            lost = (await cs.get(f"/api/v1/runs/{run['id']}")).json()
            assert lost["status"] == "error" and lost["error"]["code"] == "RUN_LOST"
            # The queued run, accepted by the dead instance, starts on the survivor.
            done = (await cs.get(f"/api/v1/runs/{queued['id']}/wait", params={"timeout": 30})).json()
            assert done["status"] == "completed", done
            assert done["instance_id"] == survivor.app.state["settings"].app.instance_id
    finally:
        doomed.kill()


async def test_queue_survives_the_death_of_the_instance_that_accepted_it(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, tmp_path: Path
) -> None:
    doomed = GranianProcess.start(servers, "acceptor", tmp_path)
    runner = await instance_factory("runner")
    try:
        async with (
            httpx.AsyncClient(base_url=doomed.base_url, headers={"X-API-Key": api_key}, timeout=30) as cd,
            runner.client(api_key) as cr,
        ):
            sid = (await cr.post("/api/v1/sessions", json={})).json()["id"]
            head = (await cr.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "sleep 1"})).json()
            accepted: list[dict[str, Any]] = []
            for i in range(3):
                body = {"prompt": f"queued {i}", "if_busy": "enqueue"}
                accepted.append((await cd.post(f"/api/v1/sessions/{sid}/runs", json=body)).json())
            doomed.kill()
            finals = [
                (await cr.get(f"/api/v1/runs/{r['id']}/wait", params={"timeout": 60})).json() for r in [head, *accepted]
            ]
            assert [r["status"] for r in finals] == ["completed"] * 4
            starts = [r["started_at"] for r in finals]
            assert starts == sorted(starts)

            async def settled() -> bool:
                session = (await cr.get(f"/api/v1/sessions/{sid}")).json()
                return bool(session["queued_runs"] == 0 and session["active_run"] is None)

            await wait_for(settled, timeout=10, what="the queue drained")
    finally:
        doomed.kill()
