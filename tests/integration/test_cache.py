"""The session cache in Valkey (`agentapi:{<sid>}:session`): cache-aside, never older than Postgres."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from valkey.asyncio import Valkey

from app.domain.sessions.valkey_keys import session_key
from app.lib.valkey.pipelined_get import PipelinedGetter
from app.lib.valkey.versioned_cache import VersionedCache
from tests.helpers import assert_problem
from tests.instances import Instance
from tests.servers import TestServers

API = "/api/v1/sessions"


# Fresh keys isolate the tests, so the module shares two default instances instead of starting new ones per test.
@pytest.fixture
def a(shared_instance: Instance) -> Instance:
    return shared_instance


@pytest.fixture
def b(shared_instance_b: Instance) -> Instance:
    return shared_instance_b


async def cached(valkey: Valkey, sid: str) -> dict[str, Any] | None:
    raw = await valkey.get(session_key(sid))
    if raw is None:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value


async def db_version(client: httpx.AsyncClient, sid: str) -> int:
    """The session's version as Postgres has it: the list endpoint never reads the cache."""
    page = (await client.get(API, params={"limit": 100})).json()
    versions = [s["version"] for s in page["items"] if s["id"] == sid]
    assert len(versions) == 1, page
    version: int = versions[0]
    return version


async def test_create_caches_and_get_is_served_from_the_cache(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        created = (await ca.post(API, json={"title": "cached", "tags": ["t"]})).json()
        sid = created["id"]
        entry = await cached(valkey, sid)
        assert entry is not None
        assert entry["version"] == 1
        assert entry["title"] == "cached"
        assert entry["id"] == sid
        ttl = await valkey.ttl(session_key(sid))
        assert 0 < ttl <= 7200
        assert api_key not in json.dumps(entry)

        # Mark the entry: a GET that returns the mark was a cache hit, on either instance.
        entry["title"] = "from-valkey"
        await valkey.set(session_key(sid), json.dumps(entry), keepttl=True)
        for client in (ca, cb):
            hit = await client.get(f"{API}/{sid}")
            assert hit.status_code == 200
            assert hit.json()["title"] == "from-valkey"
            assert set(hit.json()) == set(created)  # the owner id stored alongside is never served


async def test_miss_repopulates_from_postgres_after_flushall(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post(API, json={"title": "v1"})).json()["id"]
        patched = (await cb.patch(f"{API}/{sid}", json={"title": "v2", "metadata": {"m": [1, 2]}})).json()
        assert patched["version"] == 2
        await valkey.flushall()
        assert await cached(valkey, sid) is None

        got = await cb.get(f"{API}/{sid}")
        assert got.status_code == 200
        assert got.json() == patched
        assert got.headers["etag"] == '"2"'
        entry = await cached(valkey, sid)
        assert entry is not None
        assert entry["version"] == 2
        assert entry["title"] == "v2"
        assert 0 < await valkey.ttl(session_key(sid)) <= 7200
        # The repopulated entry serves the other instance too, identically.
        assert (await ca.get(f"{API}/{sid}")).json() == patched


async def test_corrupt_cache_entry_is_ignored_and_replaced(a: Instance, api_key: str, valkey: Valkey) -> None:
    async with a.client(api_key) as c:
        created = (await c.post(API, json={"title": "real"})).json()
        sid = created["id"]
        for garbage in (b"not json", b"[]", b'{"version": "x"}', b"\xff\xfe"):
            await valkey.set(session_key(sid), garbage)
            got = await c.get(f"{API}/{sid}")
            assert got.status_code == 200, garbage
            assert got.json() == created
            entry = await cached(valkey, sid)
            assert entry is not None
            assert entry["version"] == 1


async def test_no_stale_read_after_patch_through_the_other_instance(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post(API, json={"title": "start"})).json()["id"]
        assert (await ca.get(f"{API}/{sid}")).status_code == 200
        assert (await cb.get(f"{API}/{sid}")).status_code == 200
        for i in range(50):
            writer, reader = (ca, cb) if i % 2 else (cb, ca)
            resp = await writer.patch(f"{API}/{sid}", json={"title": f"t{i}", "metadata": {"i": i}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["version"] == i + 2
            got = await reader.get(f"{API}/{sid}")
            assert got.json()["title"] == f"t{i}", f"stale read at iteration {i}"
            assert got.json()["metadata"] == {"i": i}
            assert got.json()["version"] == i + 2
            assert got.headers["etag"] == f'"{i + 2}"'


async def test_readers_racing_writers_never_leave_an_older_version_cached(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post(API, json={"title": "race"})).json()["id"]
        for round_ in range(25):
            # Every round starts with a miss, so the readers load from Postgres while the writer commits.
            await valkey.delete(session_key(sid))
            readers = [(ca if n % 2 else cb).get(f"{API}/{sid}") for n in range(6)]
            writer = (cb if round_ % 2 else ca).patch(f"{API}/{sid}", json={"metadata": {"round": round_}})
            results = await asyncio.gather(writer, *readers)
            written = results[0]
            assert written.status_code == 200, written.text
            for read in results[1:]:
                assert read.status_code == 200
                assert read.json()["version"] in {written.json()["version"] - 1, written.json()["version"]}
            entry = await cached(valkey, sid)
            assert entry is not None
            assert entry["version"] == written.json()["version"] == await db_version(ca, sid), f"round {round_}"
            assert entry["metadata"] == {"round": round_}
            after = await cb.get(f"{API}/{sid}")
            assert after.json()["metadata"] == {"round": round_}


@pytest.mark.parametrize("pipelined", [False, True], ids=["client", "pipelined"])
async def test_versioned_cache_refuses_older_and_equal_versions(
    valkey: Valkey, servers: TestServers, pipelined: bool
) -> None:
    # `pipelined`: GET and the set-if-newer script over the app's own pipelined connection (PipelinedGetter).
    getter = PipelinedGetter(servers.valkey_url) if pipelined else None
    cache = VersionedCache(valkey, ttl=60, getter=getter)
    key = "agentapi:{test-versioned-cache}:session"
    await valkey.delete(key)
    try:
        assert await cache.set_if_newer(key, 2, b'{"version":2,"v":"two"}')
        assert not await cache.set_if_newer(key, 1, b'{"version":1,"v":"one"}')
        assert not await cache.set_if_newer(key, 2, b'{"version":2,"v":"other two"}')
        assert await cache.get(key) == b'{"version":2,"v":"two"}'
        assert await cache.set_if_newer(key, 3, b'{"version":3,"v":"three"}')
        assert await cache.get(key) == b'{"version":3,"v":"three"}'
        assert 0 < await valkey.ttl(key) <= 60

        await cache.tombstone(key)
        assert not await cache.set_if_newer(key, 4, b'{"version":4,"v":"resurrected"}')
        raw = await cache.get(key)
        assert raw is not None
        assert VersionedCache.is_tombstone(raw)

        await valkey.set(key, b"garbage")
        assert await cache.set_if_newer(key, 1, b'{"version":1,"v":"repaired"}')
        assert await cache.get(key) == b'{"version":1,"v":"repaired"}'

        # A server that forgot the script (restarted, or a replica just promoted) is sent its body (NOSCRIPT).
        await valkey.script_flush()
        assert await cache.set_if_newer(key, 2, b'{"version":2,"v":"after flush"}')
        assert not await cache.set_if_newer(key, 2, b'{"version":2,"v":"again"}')
        assert await cache.get(key) == b'{"version":2,"v":"after flush"}'
    finally:
        await valkey.delete(key)
        if getter is not None:
            await getter.aclose()


async def test_delete_leaves_no_resurrectable_cache_entry(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        for round_ in range(10):
            sid = (await ca.post(API, json={"title": f"doomed {round_}"})).json()["id"]
            await valkey.delete(session_key(sid))  # readers must go to Postgres and may re-cache what they read
            readers = [(ca if n % 2 else cb).get(f"{API}/{sid}") for n in range(6)]
            deleter = (cb if round_ % 2 else ca).delete(f"{API}/{sid}")
            results = await asyncio.gather(deleter, *readers)
            assert results[0].status_code == 204
            for read in results[1:]:
                assert read.status_code in {200, 404}
            entry = await cached(valkey, sid)
            assert entry is None or entry.get("deleted") is True, f"round {round_}: live entry {entry}"
            for client in (ca, cb):
                assert_problem(await client.get(f"{API}/{sid}"), 404, "SESSION_NOT_FOUND")
            # A reader that loaded the row just before the delete and writes it back now is refused.
            stale = json.dumps({**results[-1].json(), "version": 1}).encode() if results[-1].status_code == 200 else b""
            if stale:
                assert not await VersionedCache(valkey, ttl=60).set_if_newer(session_key(sid), 1, stale)
            entry = await cached(valkey, sid)
            assert entry is None or entry.get("deleted") is True


async def test_deleted_session_stays_gone_after_flushall(a: Instance, api_key: str, valkey: Valkey) -> None:
    async with a.client(api_key) as c:
        sid = (await c.post(API, json={})).json()["id"]
        assert (await c.delete(f"{API}/{sid}")).status_code == 204
        await valkey.flushall()
        assert_problem(await c.get(f"{API}/{sid}"), 404, "SESSION_NOT_FOUND")
        assert await cached(valkey, sid) is None
