"""Readiness on a cluster reports the cluster's own state (SPEC §11)."""

from __future__ import annotations

from tests.instances import Instance


async def test_ready_reports_the_cluster_state(a: Instance) -> None:
    async with a.client() as client:
        resp = await client.get("/health/ready")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok"
    valkey = body["checks"]["valkey"]
    assert valkey["status"] == "up"
    assert valkey["cluster_state"] == "ok"
    assert valkey["cluster_size"] == 3  # primaries serving slots
    assert valkey["cluster_known_nodes"] == 6
    assert valkey["cluster_slots_ok"] == 16384
