"""Webhook deliveries survive the death of the instance that was delivering them (real Granian processes,
SIGKILLed: no shutdown hook runs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import collect_sse, wait_for
from tests.processes import GranianProcess
from tests.servers import TestServers
from tests.webhook_receiver import Received, receiver

pytestmark = pytest.mark.processes

WH = "/api/v1/webhook-endpoints"
ENV = {"WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "WEBHOOK_POLL_INTERVAL": "0.2"}


async def run_once(client: httpx.AsyncClient, prompt: str) -> tuple[str, str]:
    async with client.stream("POST", "/api/v1/query", json={"prompt": prompt}) as resp:
        assert resp.status_code == 200
        events = await collect_sse(resp, timeout=30)
    return events[0].data["session_id"], events[0].data["run_id"]


async def only_delivery(client: httpx.AsyncClient, endpoint_id: str) -> dict[str, Any]:
    resp = await client.get(f"{WH}/{endpoint_id}/deliveries")
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    assert len(items) == 1, items
    return items[0]


async def test_the_delivering_instance_dies_mid_backoff_and_another_delivers(
    servers: TestServers, tmp_path: Path, api_key: str
) -> None:
    headers = {"X-API-Key": api_key}
    with receiver(lambda _req, n: 500 if n == 0 else 200) as rec:
        first = GranianProcess.start(servers, "wh-1", tmp_path, **ENV, WEBHOOK_RETRY_INITIAL_DELAY="3")
        second: GranianProcess | None = None
        try:
            async with httpx.AsyncClient(base_url=first.base_url, headers=headers, timeout=30) as c1:
                endpoint = (await c1.post(WH, json={"url": rec.url()})).json()
                sid, run_id = await run_once(c1, "hello")

                async def backing_off() -> dict[str, Any] | None:
                    d = await only_delivery(c1, endpoint["id"])
                    return d if d["attempts"] == 1 and d["status"] == "pending" else None

                pending = await wait_for(backing_off, timeout=15, what="first attempt failed, retry scheduled")
                assert pending["response_status"] == 500
                assert pending["next_attempt_at"] is not None
            first.kill()
            killed_at = time.time()
            second = GranianProcess.start(servers, "wh-2", tmp_path, **ENV, WEBHOOK_RETRY_INITIAL_DELAY="3")
            async with httpx.AsyncClient(base_url=second.base_url, headers=headers, timeout=30) as c2:

                async def delivered() -> dict[str, Any] | None:
                    d = await only_delivery(c2, endpoint["id"])
                    return d if d["status"] == "delivered" else None

                final = await wait_for(delivered, timeout=30, what="delivered by the other instance")
            attempts: list[Received] = rec.requests()
            assert [r.status for r in attempts] == [500, 200]
            assert attempts[1].at > killed_at
            assert {r.webhook_id for r in attempts} == {final["event_id"]}
            bodies = [r.verify(endpoint["secret"]) for r in attempts]
            assert bodies[1]["data"]["id"] == run_id
            assert bodies[1]["data"]["session_id"] == sid
            assert bodies[1]["data"]["status"] == "completed"
            assert final["attempts"] == 2
        finally:
            first.kill()
            if second is not None:
                second.kill()


async def test_a_claim_of_a_killed_instance_is_taken_over_after_its_lease(
    servers: TestServers, tmp_path: Path, api_key: str
) -> None:
    """Killed while its attempt is in flight: the row stays claimed until the lease ends (no second attempt
    meanwhile), then another instance delivers it."""
    headers = {"X-API-Key": api_key}
    unblock = threading.Event()

    def respond(_req: Received, n: int) -> int:
        if n == 0:
            unblock.wait(60)  # the killed instance never hears back
        return 200

    env = {**ENV, "WEBHOOK_TIMEOUT": "2", "WEBHOOK_CLAIM_LEASE": "8"}
    with receiver(respond) as rec:
        first = GranianProcess.start(servers, "wh-3", tmp_path, **env)
        second: GranianProcess | None = None
        try:
            async with httpx.AsyncClient(base_url=first.base_url, headers=headers, timeout=30) as c1:
                endpoint = (await c1.post(WH, json={"url": rec.url()})).json()
                await run_once(c1, "hello")

                async def in_flight() -> bool:
                    return rec.arrived() == 1

                await wait_for(in_flight, timeout=15, what="first attempt in flight")
            first.kill()
            killed_at = time.time()
            unblock.set()
            second = GranianProcess.start(servers, "wh-4", tmp_path, **env)
            async with httpx.AsyncClient(base_url=second.base_url, headers=headers, timeout=30) as c2:

                async def delivered() -> dict[str, Any] | None:
                    d = await only_delivery(c2, endpoint["id"])
                    return d if d["status"] == "delivered" else None

                final = await wait_for(delivered, timeout=40, what="taken over after the lease")
            requests = rec.requests()
            taken_over = [r for r in requests if r.at > killed_at + 0.5]
            assert len(taken_over) == 1
            assert {r.webhook_id for r in requests} == {final["event_id"]}
            # The killed attempt was never recorded; the takeover waited for the claim to lapse.
            assert final["attempts"] == 1
            first_attempt = min(requests, key=lambda r: r.at)
            assert taken_over[0].at - first_attempt.at >= 7.0  # WEBHOOK_CLAIM_LEASE=8, claimed just before
            taken_over[0].verify(endpoint["secret"])
        finally:
            first.kill()
            if second is not None:
                second.kill()
