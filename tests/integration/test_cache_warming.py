"""Startup cache warming: the most recently active sessions are in Valkey before anyone reads them, bounded in
count and time, never over a newer version, and one instance at a time."""

from __future__ import annotations

import asyncio
import json
import time

from valkey.asyncio import Valkey

from app.domain.sessions.valkey_keys import session_key
from app.domain.sessions.warming import WARM_MARKER_KEY, CacheWarmer
from tests.helpers import collect_sse
from tests.instances import Instance, InstanceFactory

API = "/api/v1/sessions"


def warmer_of(inst: Instance) -> CacheWarmer:
    return inst.components.cache_warmer


async def warmed(inst: Instance, timeout: float = 10.0) -> int:
    task = warmer_of(inst).task
    assert task is not None, "warming did not start"
    return await asyncio.wait_for(asyncio.shield(task), timeout)


async def cached_version(valkey: Valkey, session_id: str) -> int | None:
    raw = await valkey.get(session_key(session_id))
    return None if raw is None else int(json.loads(raw)["version"])


async def hits(inst: Instance) -> float:
    async with inst.client() as c:
        text = (await c.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith('agentapi_session_cache_requests_total{result="hit"}'):
            return float(line.split()[-1])
    return 0.0


async def test_recent_sessions_are_cache_hits_on_a_new_instance(
    shared_instance: Instance, instance_factory: InstanceFactory, api_key: str, valkey: Valkey
) -> None:
    async with shared_instance.client(api_key) as c:
        ids = [(await c.post(API, json={"title": f"warm {i}"})).json()["id"] for i in range(3)]
        # The oldest one ran last: by recency (last run, else last update) it comes first.
        async with c.stream("POST", f"{API}/{ids[0]}/resume", json={"prompt": "hello"}) as stream:
            assert (await collect_sse(stream))[-1].event == "done"
        versions = {sid: (await c.get(f"{API}/{sid}")).json()["version"] for sid in ids}

    await valkey.delete(WARM_MARKER_KEY, *(session_key(sid) for sid in ids))

    # Only the single most recently active session of the whole database.
    one = await instance_factory("warm-one", sessions__cache_warm_count=1)
    assert await warmed(one) == 1
    assert await cached_version(valkey, ids[0]) == versions[ids[0]]
    assert await cached_version(valkey, ids[1]) is None
    assert await cached_version(valkey, ids[2]) is None

    # Another instance starting right after skips: the cache is shared and was just warmed.
    skipped = await instance_factory("warm-skip", sessions__cache_warm_count=100)
    assert await warmed(skipped) == 0
    assert await cached_version(valkey, ids[1]) is None

    await valkey.delete(WARM_MARKER_KEY, *(session_key(sid) for sid in ids))
    inst = await instance_factory("warm-all", sessions__cache_warm_count=100)
    assert await warmed(inst) >= 3
    for sid in ids:
        assert await cached_version(valkey, sid) == versions[sid]

    # Reads on the new instance are hits, not Postgres round trips.
    before = await hits(inst)
    async with inst.client(api_key) as c:
        for sid in ids:
            assert (await c.get(f"{API}/{sid}")).json()["version"] == versions[sid]
    assert await hits(inst) - before == len(ids)


async def test_warming_is_bounded_in_time_and_never_delays_readiness(
    instance_factory: InstanceFactory, valkey: Valkey
) -> None:
    await valkey.delete(WARM_MARKER_KEY)
    started = time.monotonic()
    inst = await instance_factory("warm-tiny", sessions__cache_warm_count=1_000_000, sessions__cache_warm_timeout=0.001)
    async with inst.client() as c:
        assert (await c.get("/health/ready")).status_code == 200
    task = warmer_of(inst).task
    assert task is not None
    # The timeout stops it whatever is left: done well within the deadline, nothing raised.
    assert await asyncio.wait_for(asyncio.shield(task), 5) == 0
    assert time.monotonic() - started < 10

    disabled = await instance_factory("warm-off", sessions__cache_warm_count=0)
    assert warmer_of(disabled).task is None


async def test_warming_never_overwrites_a_newer_version_or_a_delete(
    shared_instance: Instance, api_key: str, valkey: Valkey
) -> None:
    async with shared_instance.client(api_key) as c:
        kept = (await c.post(API, json={"title": "v1"})).json()["id"]
        gone = (await c.post(API, json={"title": "doomed"})).json()["id"]
        components = shared_instance.components
        warmer = CacheWarmer(
            components.session_cache,
            components.alchemy,
            valkey,
            count=10,
            timeout=10,
            instance_id="race",
        )
        rows = await warmer.load()  # read at version 1 ...
        assert {str(r.id) for r in rows} >= {kept, gone}

        # ... then a writer commits version 2 (and caches it) and another deletes a session ...
        patched = await c.patch(f"{API}/{kept}", json={"title": "v2"})
        assert patched.json()["version"] == 2
        assert (await c.delete(f"{API}/{gone}")).status_code == 204

        # ... before the warmer writes what it read: its older versions lose.
        await warmer.put(rows)
        assert await cached_version(valkey, kept) == 2
        got = await c.get(f"{API}/{kept}")
        assert got.json()["title"] == "v2"
        assert (await c.get(f"{API}/{gone}")).status_code == 404
