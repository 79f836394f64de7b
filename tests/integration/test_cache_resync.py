"""A write that could not reach the cache (Valkey down) must not let an old entry come back with Valkey
(e.g. restored from a snapshot): the writer drops it as soon as Valkey answers again."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.sessions.valkey_keys import session_key
from tests.instances import Instance
from tests.servers import TestServers

pytestmark = pytest.mark.faults


async def test_entry_restored_by_valkey_is_not_served_after_a_missed_write(
    servers: TestServers, a: Instance, b: Instance, api_key: str, valkey: Any
) -> None:
    if not servers.can_inject_faults:
        pytest.skip("fault injection needs the embedded servers")
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={"title": "v1"})).json()["id"]
        key = session_key(sid)
        old_entry = await valkey.get(key)
        assert old_entry is not None
        servers.stop_valkey()
        try:
            patched = await ca.patch(f"/api/v1/sessions/{sid}", json={"title": "v2"})
            assert patched.status_code == 200 and patched.json()["version"] == 2
        finally:
            servers.start_valkey()
        await valkey.connection_pool.disconnect()
        await valkey.set(key, old_entry)  # what a snapshot restore would bring back
        got = await ca.get(f"/api/v1/sessions/{sid}")
        assert got.json()["title"] == "v2" and got.json()["version"] == 2
        # The writer cleared the stale entry, so the other instance reads the truth too.
        assert (await cb.get(f"/api/v1/sessions/{sid}")).json()["version"] == 2
