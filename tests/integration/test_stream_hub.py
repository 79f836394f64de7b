"""The shared blocking reader (`StreamHub`): every SSE follower of an instance is fed by one XREAD BLOCK on real
Valkey. Each subscription gets every entry after its cursor exactly once, in order, whichever cursor it joined
at; a stream added while the read blocks is read at once (the wake); a follower that leaves unsubscribes; a
Valkey restart fails the waiting reads like a follower's own XREAD did, and the reader recovers by itself."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.lib.problems import is_valkey_unavailable
from app.lib.valkey import stream_hub
from app.lib.valkey.client import ValkeyClients
from app.lib.valkey.event_log import EventLog
from app.lib.valkey.stream_hub import StreamHub, Subscription, wake_key
from tests.helpers import iter_sse, wait_for
from tests.instances import Instance
from tests.servers import TestServers


@pytest.fixture
async def hub(servers: TestServers) -> AsyncIterator[StreamHub]:
    clients = ValkeyClients.from_url(servers.valkey_url, socket_timeout=2.0, connect_timeout=1.0, max_connections=50)
    events = EventLog(clients.main, clients.blocking, appender=clients.appender)
    shared = StreamHub(events, clients.main, clients.blocking, wake_key(f"hub-test-{secrets.token_hex(4)}"))
    yield shared
    await shared.aclose()
    await clients.aclose()


def new_key() -> str:
    return f"agentapi:{{hub-test-{secrets.token_hex(4)}}}:events"


async def append(hub: StreamHub, key: str, count: int) -> list[str]:
    return await hub.events.append_many(key, [{"e": "message", "d": b"{}"} for _ in range(count)])


async def collect(sub: Subscription, after: str, count: int, timeout: float = 5.0) -> list[str]:
    """The ids of the next `count` entries after `after`, read the way a follower reads."""
    got: list[str] = []
    cursor = after
    async with asyncio.timeout(timeout):
        while len(got) < count:
            for entry in await sub.read(cursor, count=100, block_ms=1000):
                got.append(entry.id)
                cursor = entry.id
    return got


async def test_subscriptions_from_different_cursors_get_each_entry_once_in_order(hub: StreamHub) -> None:
    key = new_key()
    first = await append(hub, key, 5)
    early = hub.subscribe(key, "0-0")
    assert await collect(early, "0-0", 5) == first
    second = await append(hub, key, 5)
    assert await collect(early, first[-1], 5) == second
    # Joins behind the shared read (which is past `second`): the gap comes from the stream itself, then live.
    late = hub.subscribe(key, "0-0")
    # Joins ahead of it: nothing it already has comes twice.
    ahead = hub.subscribe(key, second[-1])
    third = await append(hub, key, 5)
    assert await collect(late, "0-0", 15) == first + second + third
    assert await collect(ahead, second[-1], 5) == third
    assert await collect(early, second[-1], 5) == third
    for sub in (early, late, ahead):
        sub.close()
    assert hub.followed == 0 and hub.subscriptions == 0


async def test_a_stream_added_while_the_read_blocks_is_read_at_once(hub: StreamHub) -> None:
    quiet, busy = new_key(), new_key()
    await append(hub, quiet, 1)
    waiting = hub.subscribe(quiet, "0-0")
    await collect(waiting, "0-0", 1)
    reads = hub.reads

    async def blocked() -> bool:
        return hub.reads > reads  # the next XREAD is out, naming only `quiet`

    await wait_for(blocked, what="the shared read to block")
    joined = hub.subscribe(busy, "0-0")
    ids = await append(hub, busy, 3)
    # Well under the read's own BLOCK_MS (5 s): the wake made it name `busy` at once.
    assert await collect(joined, "0-0", 3, timeout=stream_hub.BLOCK_MS / 1000 / 2) == ids
    waiting.close()
    joined.close()


async def test_a_consumer_that_does_not_read_catches_up_from_the_stream(
    hub: StreamHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_hub, "MAX_QUEUED", 10)
    key = new_key()
    slow = hub.subscribe(key, "0-0")
    fast = hub.subscribe(key, "0-0")
    ids: list[str] = []
    for _ in range(5):
        ids += await append(hub, key, 10)
    assert await collect(fast, "0-0", 50) == ids
    # `slow` overflowed meanwhile (its queue is bounded): it reads the rest from the stream, each entry once.
    assert len(slow._queue) <= 10
    assert await collect(slow, "0-0", 50) == ids
    slow.close()
    fast.close()


@pytest.mark.faults
async def test_the_shared_read_fails_followers_through_a_restart_and_recovers(
    servers: TestServers, hub: StreamHub
) -> None:
    if not servers.can_inject_faults:
        pytest.skip("fault injection needs the embedded servers")
    key = new_key()
    before = await append(hub, key, 2)
    sub = hub.subscribe(key, "0-0")
    assert await collect(sub, "0-0", 2) == before
    await asyncio.to_thread(servers.stop_valkey)
    try:
        failed: list[BaseException] = []

        async def read_fails() -> bool:
            try:
                await sub.read(before[-1], count=10, block_ms=200)
            except Exception as exc:
                failed.append(exc)
            return bool(failed)

        await wait_for(read_fails, timeout=15, what="a read to fail while Valkey is down")
        assert is_valkey_unavailable(failed[0]), failed[0]
    finally:
        await asyncio.to_thread(servers.start_valkey)

    async def appended() -> list[str]:
        try:
            return await append(hub, key, 3)
        except Exception:
            return []

    after = await wait_for(appended, timeout=15, what="Valkey to take appends again")
    got = await collect(sub, before[-1], 3, timeout=15)
    assert got == after
    assert hub.error is None
    sub.close()


# -- through the API: followers on one instance, runs on the other -------------------------------------------


async def follow(client: httpx.AsyncClient, sid: str) -> list[Any]:
    async with client.stream("GET", f"/api/v1/sessions/{sid}/events") as resp:
        assert resp.status_code == 200, await resp.aread()
        out = []
        async for ev in iter_sse(resp):
            if ev.comment:
                continue
            out.append(ev)
            if ev.event == "done":
                break
        return out


async def test_followers_of_different_sessions_share_the_reader_and_get_their_own_events(
    a: Instance, b: Instance, api_key: str
) -> None:
    hub = b.components.event_follower.hub
    assert hub is not None
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, hub.followed)
            await asyncio.sleep(0.01)

    async with a.client(api_key) as ca, b.client(api_key) as cb:
        runs = [(await ca.post("/api/v1/runs", json={"prompt": "sleep 1"})).json() for _ in range(6)]
        watcher = asyncio.create_task(watch())
        try:
            followed = await asyncio.gather(*(follow(cb, r["session_id"]) for r in runs))
        finally:
            watcher.cancel()
    assert peak >= 2  # several streams in one shared read
    for run, events in zip(runs, followed, strict=True):
        names = [e.event for e in events]
        assert names[0] == "init" and names[-1] == "done" and names.count("done") == 1, names
        assert events[0].data["run_id"] == run["id"]
        ids = [tuple(map(int, e.id.split("-"))) for e in events]
        assert ids == sorted(set(ids)), "ids must increase, each once"
        ticks = [e.data["content"][0]["text"] for e in events if e.event == "message" and e.data["role"] != "user"]
        assert ticks == [f"tick {i}" for i in range(1, len(ticks) + 1)] and len(ticks) >= 5, ticks

    async def unsubscribed() -> bool:
        return hub.followed == 0 and hub.subscriptions == 0

    await wait_for(unsubscribed, what="every subscription to end with its stream")


async def test_a_follower_that_leaves_unsubscribes(a: Instance, b: Instance, api_key: str) -> None:
    hub = b.components.event_follower.hub
    assert hub is not None
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        run = (await ca.post("/api/v1/runs", json={"prompt": "sleep 30"})).json()
        async with cb.stream("GET", f"/api/v1/sessions/{run['session_id']}/events") as resp:
            async for ev in iter_sse(resp):
                if ev.event == "message" and ev.data["role"] == "assistant":
                    break  # live: a tick came through the shared read

            async def subscribed() -> bool:
                return hub.subscriptions == 1

            await wait_for(subscribed, what="the follower to subscribe")
        # The client went away mid-run.

        async def unsubscribed() -> bool:
            return hub.subscriptions == 0 and hub.followed == 0

        await wait_for(unsubscribed, what="the subscription to end with its client")
        assert (await ca.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 202
