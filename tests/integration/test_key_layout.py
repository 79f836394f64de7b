"""Valkey key layout (SPEC §5, §11): control messages go to the owning instance's stream only, and every key the
service writes carries a hash tag (one slot per command on a cluster). Also run on a cluster (tests/integration/
cluster)."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from app.domain.runs import control
from app.lib.valkey.control import FIELD, control_stream_key
from tests.helpers import wait_for
from tests.instances import Instance, InstanceFactory

TAGGED = re.compile(r"^agentapi:\{[^{}]+\}:.+")


def instance_id(instance: Instance) -> str:
    return str(instance.app.state["settings"].app.instance_id)


async def stream_entries(valkey: Any, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(eid.decode(), fields) for eid, fields in await valkey.xrange(key)]


async def test_an_interrupt_reaches_only_the_owners_control_stream(
    a: Instance, b: Instance, api_key: str, valkey: Any
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        run = (await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "sleep 30"})).json()
        assert run["instance_id"] == instance_id(a)
        before_a = await stream_entries(valkey, control_stream_key(instance_id(a)))
        before_b = await stream_entries(valkey, control_stream_key(instance_id(b)))
        assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
        ended = (await cb.get(f"/api/v1/runs/{run['id']}/wait", params={"timeout": 10})).json()
        assert ended["status"] == "interrupted"
        after_a = await stream_entries(valkey, control_stream_key(instance_id(a)))
        new = after_a[len(before_a) :]
        assert len(new) == 1, new
        message = control.decode(new[0][1][FIELD.encode()])
        assert isinstance(message, control.Interrupt)
        assert message.run_id == UUID(run["id"])
        assert await stream_entries(valkey, control_stream_key(instance_id(b))) == before_b
        # Capped and expiring: a dead instance's stream goes away by itself.
        assert 0 < await valkey.ttl(control_stream_key(instance_id(a))) <= 3600


async def test_every_key_is_in_one_hash_tag(instance_factory: InstanceFactory, api_key: str, valkey: Any) -> None:
    # Rate limits and startup cache warming on too, so their keys exist.
    a = await instance_factory("layout-a", app__rate_limit_per_minute=1000, sessions__cache_warm_count=10)
    b = await instance_factory("layout-b", app__rate_limit_per_minute=1000, app__auth_failures_per_minute=1000)
    async with a.client(api_key) as ca, b.client(api_key) as cb, b.client("not-a-key") as bad:
        assert (await bad.get("/api/v1/sessions")).status_code == 401
        sid = (await ca.post("/api/v1/sessions", json={}, headers={"Idempotency-Key": "layout-1"})).json()["id"]
        run = (await cb.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "ask colour?"})).json()

        async def asked() -> bool:
            return bool((await ca.get(f"/api/v1/runs/{run['id']}")).json()["status"] == "running")

        await wait_for(asked, what="the run to start")
        await wait_for(lambda: _answered(ca, sid), what="the answer to be delivered across instances", timeout=10)
        await cb.get(f"/api/v1/runs/{run['id']}/wait", params={"timeout": 10})
    keys = [k.decode() async for k in valkey.scan_iter(match="agentapi:*", count=1000)]
    assert keys, "the service wrote no keys"
    untagged = sorted(k for k in keys if not TAGGED.match(k))
    assert untagged == [], untagged


async def _answered(client: Any, sid: str) -> bool:
    reply = await client.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "blue"})
    return bool(reply.status_code == 200)
