"""Concurrent writers across instances: the session lock serialises them, the version fences them (SPEC §3, §5, §6)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
from valkey.asyncio import Valkey

from app.domain.sessions.valkey_keys import lock_key
from tests.helpers import assert_problem
from tests.instances import Instance, InstanceFactory

API = "/api/v1/sessions"


async def test_concurrent_patches_across_instances_lose_no_update(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    writers = 40
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post(API, json={"title": "counter", "tags": []})).json()["id"]

        async def write(n: int) -> httpx.Response:
            client = ca if n % 2 else cb
            return await client.patch(f"{API}/{sid}", json={"title": f"writer {n}", "metadata": {"writer": n}})

        responses = await asyncio.gather(*(write(n) for n in range(writers)))
        # 40 short writes take well under the 5 s lock timeout: every one of them must commit.
        assert [r.status_code for r in responses] == [200] * writers, [
            r.text for r in responses if r.status_code != 200
        ]
        ok = list(responses)

        final = (await ca.get(f"{API}/{sid}")).json()
        assert final["version"] == 1 + len(ok)
        # Every successful write got its own version: 2..N+1, no two writers claimed the same one.
        versions = sorted(r.json()["version"] for r in ok)
        assert versions == list(range(2, 2 + len(ok)))
        for r in ok:
            body = r.json()
            n = body["metadata"]["writer"]
            assert body["title"] == f"writer {n}"
            assert r.headers["etag"] == f'"{body["version"]}"'
        # The last committed write is the one the session shows, from Postgres and from the cache alike.
        last = max(ok, key=lambda r: r.json()["version"]).json()
        assert final["title"] == last["title"]
        assert final["metadata"] == last["metadata"]
        page = (await cb.get(API)).json()
        assert page["items"][0]["version"] == final["version"]
        assert page["items"][0]["title"] == last["title"]
        assert not await valkey.exists(lock_key(sid)), "a writer left the lock behind"


async def test_concurrent_if_match_writers_exactly_one_wins(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post(API, json={})).json()["id"]
        for round_ in range(5):
            version = (await ca.get(f"{API}/{sid}")).json()["version"]
            responses = await asyncio.gather(
                *(
                    (ca if n % 2 else cb).patch(
                        f"{API}/{sid}", json={"title": f"r{round_} w{n}"}, headers={"If-Match": f'"{version}"'}
                    )
                    for n in range(8)
                )
            )
            winners = [r for r in responses if r.status_code == 200]
            assert len(winners) == 1, [r.status_code for r in responses]
            assert winners[0].json()["version"] == version + 1
            for r in responses:
                if r.status_code != 200:
                    assert_problem(r, 412, "VERSION_CONFLICT")
            got = (await cb.get(f"{API}/{sid}")).json()
            assert got["title"] == winners[0].json()["title"]
            assert got["version"] == version + 1


async def test_held_lock_gives_409_session_locked_after_the_timeout(
    instance_factory: InstanceFactory, api_key: str, valkey: Valkey
) -> None:
    inst: Instance = await instance_factory("locky", sessions__lock_timeout=0.3)
    async with inst.client(api_key) as c:
        sid = (await c.post(API, json={"title": "before"})).json()["id"]
        token = secrets.token_hex(8)
        assert await valkey.set(lock_key(sid), token, nx=True, px=30_000)
        try:
            started = time.monotonic()
            resp = await c.patch(f"{API}/{sid}", json={"title": "blocked"})
            elapsed = time.monotonic() - started
            body = assert_problem(resp, 409, "SESSION_LOCKED")
            assert body["detail"]
            assert "retry-after" in resp.headers
            assert 0.25 <= elapsed < 3.0, elapsed
            # Our lock is still ours: the loser did not delete or overwrite it.
            assert await valkey.get(lock_key(sid)) == token.encode()
            # Nothing changed.
            got = (await c.get(f"{API}/{sid}")).json()
            assert got["title"] == "before"
            assert got["version"] == 1
            # Reads are not blocked by the lock.
            assert (await c.get(API)).json()["total"] == 1
        finally:
            await valkey.delete(lock_key(sid))
        resp = await c.patch(f"{API}/{sid}", json={"title": "after"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["version"] == 2


async def test_writer_waits_for_a_lock_released_before_the_timeout(
    instance_factory: InstanceFactory, api_key: str, valkey: Valkey
) -> None:
    inst: Instance = await instance_factory("patient", sessions__lock_timeout=5.0)
    async with inst.client(api_key) as c:
        sid = (await c.post(API, json={})).json()["id"]
        assert await valkey.set(lock_key(sid), "held-by-test", nx=True, px=30_000)
        pending = asyncio.create_task(c.patch(f"{API}/{sid}", json={"title": "eventually"}))
        try:
            # The writer is still waiting while we hold the lock (it cannot have committed).
            done, _ = await asyncio.wait({pending}, timeout=0.3)
            assert not done
            assert (await c.get(API)).json()["items"][0]["version"] == 1
        finally:
            await valkey.delete(lock_key(sid))
        resp = await asyncio.wait_for(pending, 5)
        assert resp.status_code == 200, resp.text
        assert resp.json()["title"] == "eventually"
        assert resp.json()["version"] == 2


async def test_lock_holder_past_its_ttl_cannot_overwrite_a_newer_write(
    instance_factory: InstanceFactory, api_key: str
) -> None:
    """Tiny lock TTL: writers' locks expire mid-write, so they overlap; the version fence still loses nothing."""
    fast_a: Instance = await instance_factory("ttl-a", sessions__lock_ttl_ms=1)
    fast_b: Instance = await instance_factory("ttl-b", sessions__lock_ttl_ms=1)
    async with fast_a.client(api_key) as ca, fast_b.client(api_key) as cb:
        sid = (await ca.post(API, json={})).json()["id"]
        responses = await asyncio.gather(
            *((ca if n % 2 else cb).patch(f"{API}/{sid}", json={"metadata": {"n": n}}) for n in range(30))
        )
        # Overlapping writers queue on the row instead of failing: none is refused, none is lost.
        assert [r.status_code for r in responses] == [200] * 30, [r.text for r in responses if r.status_code != 200]
        ok: list[dict[str, Any]] = [r.json() for r in responses]
        final = (await ca.get(f"{API}/{sid}")).json()
        assert final["version"] == 1 + len(ok)
        assert sorted(s["version"] for s in ok) == list(range(2, 2 + len(ok)))
        last = max(ok, key=lambda s: s["version"])
        assert final["metadata"] == last["metadata"]
