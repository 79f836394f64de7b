"""`/metrics` on a real Granian process with two workers (multiprocess mode): the counters move."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.helpers import collect_sse
from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = pytest.mark.processes


def sample(text: str, name: str, labels: str = "") -> float:
    """Sum of every sample of `name` whose label set contains `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match and labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


async def test_metrics_aggregate_across_workers(servers: TestServers, api_key: str, tmp_path: Path) -> None:
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    proc = GranianProcess.start(servers, "metrics", tmp_path, workers=2, PROMETHEUS_MULTIPROC_DIR=str(prom_dir))
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": api_key}, timeout=30) as client:
            before = (await client.get("/metrics")).text
            sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
            for _ in range(20):  # spread over both workers by the kernel
                assert (await client.get(f"/api/v1/sessions/{sid}")).status_code == 200
            async with client.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "hello"}) as resp:
                await collect_sse(resp)
            assert (await client.patch(f"/api/v1/sessions/{sid}", json={"title": "locked"})).status_code == 200
            after_resp = await client.get("/metrics")
            assert after_resp.status_code == 200
            assert after_resp.headers["content-type"].startswith("text/plain")
            after = after_resp.text
    finally:
        proc.kill()
    hits = "agentapi_session_cache_requests_total"
    assert sample(after, hits, 'result="hit"') - sample(before, hits, 'result="hit"') >= 20
    assert (
        sample(after, "agentapi_runs_total", 'reason="completed"')
        - sample(before, "agentapi_runs_total", 'reason="completed"')
        == 1
    )
    # PATCH takes the session lock (runs start and end under the Postgres row lock instead).
    assert sample(after, "agentapi_lock_acquisitions_total", 'outcome="acquired"') >= 1
    assert sample(after, "agentapi_active_runs") == 0
    assert sample(after, "agentapi_requests_total") > sample(before, "agentapi_requests_total")
