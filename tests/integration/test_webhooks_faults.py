"""Webhook deliveries need only Postgres: with Valkey down, retries and new events are still delivered."""

from __future__ import annotations

from typing import Any

import pytest
from valkey.asyncio import Valkey

from tests.helpers import wait_for
from tests.instances import InstanceFactory
from tests.integration.test_webhooks import FAST, deliveries, enqueue_directly, register, run_to_done
from tests.servers import TestServers
from tests.webhook_receiver import receiver

pytestmark = pytest.mark.faults


async def test_deliveries_continue_while_valkey_is_down(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, valkey: Valkey
) -> None:
    if not servers.can_inject_faults:
        pytest.skip("needs the embedded servers (TEST_DATABASE_URL / TEST_VALKEY_URL point at external ones)")
    inst = await instance_factory("novalkey", **{**FAST, "webhooks__retry_initial_delay": 1.0})
    with receiver(lambda _req, n: 500 if n == 0 else 200) as rec:
        async with inst.client(api_key) as c:
            endpoint = await register(c, rec.url())
            _, run_id, _ = await run_to_done(c, "before the outage")

            async def first_failed() -> bool:
                return rec.arrived() >= 1 and rec.requests()[0].status == 500

            await wait_for(first_failed, timeout=15, what="first attempt refused")
            servers.stop_valkey()
            try:
                # The retry falls due during the outage.
                async def all_delivered(count: int) -> list[dict[str, Any]] | None:
                    items: list[dict[str, Any]] = (await deliveries(c, endpoint["id"]))["items"]
                    done = len(items) == count and all(d["status"] == "delivered" for d in items)
                    return items if done else None

                await wait_for(lambda: all_delivered(1), timeout=20, what="retry delivered without Valkey")
                # A new event committed during the outage (through the runs code's seam) goes out too.
                await enqueue_directly(
                    servers, api_key, "run.failed", [{"id": "during", "session_id": "s", "status": "error"}]
                )
                items = await wait_for(lambda: all_delivered(2), timeout=20, what="new event without Valkey")
                assert not await _valkey_up(valkey)
            finally:
                servers.start_valkey()
            bodies = [r.verify(endpoint["secret"]) for r in rec.requests()]
            # Every event's first attempt is answered 500: the new one was retried during the outage too.
            assert [b["data"]["id"] for b in bodies] == [run_id, run_id, "during", "during"]
            assert [r.status for r in rec.requests()] == [500, 200, 500, 200]
            assert [d["attempts"] for d in items] == [2, 2]


async def _valkey_up(valkey: Valkey) -> bool:
    try:
        return bool(await valkey.ping())
    except Exception:
        return False
