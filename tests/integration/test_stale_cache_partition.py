"""Issue 18 item 3: an instance that cannot reach Valkey writes a session; the others must not serve the old
cached version for the cache's TTL (2 h) but within seconds: the missed cache write is remembered in Postgres
(`cache_invalidation`) and applied by any instance that reaches Valkey."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text

from app.asgi import build_alchemy_config
from app.domain.sessions.valkey_keys import session_key
from tests.helpers import wait_for
from tests.instances import InstanceFactory, make_settings
from tests.servers import TestServers, free_port

API = "/api/v1/sessions"
# The sweep runs every SESSION_CACHE_SWEEP_INTERVAL (2 s by default); generous for a loaded machine.
DEADLINE = 20.0


async def pending_rows(servers: TestServers, sid: str) -> int:
    config = build_alchemy_config(make_settings(servers, "check"))
    try:
        async with config.get_engine().connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM cache_invalidation WHERE session_id = :s"), {"s": sid}
            )
            return int(found.scalar_one())
    finally:
        await config.get_engine().dispose()


async def test_write_from_an_instance_without_valkey_reaches_the_other_instances_within_seconds(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str, valkey: Any
) -> None:
    # A partial partition: `blind` has Postgres but its Valkey is a closed port; `seeing` has both.
    blind = await instance_factory("blind", valkey__url=f"redis://127.0.0.1:{free_port()}/0")
    seeing = await instance_factory("seeing")
    async with seeing.client(api_key) as cs, blind.client(api_key) as cb:
        sid = (await cs.post(API, json={"title": "v1"})).json()["id"]
        assert (await cs.get(f"{API}/{sid}")).json()["version"] == 1
        assert await valkey.get(session_key(sid)) is not None  # `seeing` serves it from the cache

        patched = await cb.patch(f"{API}/{sid}", json={"title": "v2"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["version"] == 2

        async def sees_v2() -> httpx.Response | None:
            resp = await cs.get(f"{API}/{sid}")
            return resp if resp.json()["version"] == 2 else None

        served = await wait_for(sees_v2, timeout=DEADLINE, interval=0.2, what="the other instance to serve v2")
        assert served.json()["title"] == "v2"
        # The ETag it serves is the one If-Match takes (no 412 forever).
        again = await cs.patch(f"{API}/{sid}", json={"title": "v3"}, headers={"If-Match": served.headers["etag"]})
        assert again.status_code == 200, again.text
        await wait_for(lambda: pending_rows_zero(servers, sid), timeout=DEADLINE, what="the row to be processed")

        # A delete from the blind instance: the other stops serving the session.
        sid2 = (await cs.post(API, json={"title": "doomed"})).json()["id"]
        assert (await cs.get(f"{API}/{sid2}")).status_code == 200
        assert (await cb.delete(f"{API}/{sid2}")).status_code == 204

        async def gone() -> bool:
            return (await cs.get(f"{API}/{sid2}")).status_code == 404

        await wait_for(gone, timeout=DEADLINE, interval=0.2, what="the deleted session to be 404 on the other instance")
        await wait_for(lambda: pending_rows_zero(servers, sid2), timeout=DEADLINE, what="the row to be processed")


async def pending_rows_zero(servers: TestServers, sid: str) -> bool:
    return await pending_rows(servers, sid) == 0
