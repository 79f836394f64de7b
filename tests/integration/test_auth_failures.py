"""Failed authentication is cheap and bounded (issue 16): unknown keys are cached negatively, a client address
gets AUTH_FAILURES_PER_MINUTE lookups per minute across all instances (then 429 without any database work),
Valkey down falls back to a local count, and bad input is a 401, never a 5xx or a query.

Every test talks through TRUSTED_PROXIES=127.0.0.1 with an X-Forwarded-For address of its own, so its budget
is its own. Database work is counted per instance with a SQLAlchemy event on the instance's engine (the reaper's
first sweep is an hour away, so every statement counted is the authenticator's)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from valkey.asyncio import Valkey

from app.asgi import build_alchemy_config
from app.db.models import ApiKey
from app.domain.keys.hashing import fingerprint, hash_key
from app.domain.keys.services import ApiKeyService
from app.lib.valkey.rate_limiter import counter_key
from tests.helpers import assert_problem, wait_for
from tests.instances import Instance, InstanceFactory, create_api_key, make_settings
from tests.integration.test_auth import revoke
from tests.servers import TestServers

API = "/api/v1/sessions"
LIMIT = 5


# Statements of each instance's background loops (the run reaper's sweep, the webhook dispatcher, the cache
# invalidation sweeper), which run whatever the requests are.
BACKGROUND = ("queued_runs > ", "webhook_", "cache_invalidation", "LISTEN ", "pg_notify")


class Statements:
    """Counts the SQL statements one instance sends to Postgres: all of them, and the API-key lookups."""

    def __init__(self, inst: Instance) -> None:
        self.count = 0
        self.lookups = 0
        self.engine = inst.app.state["alchemy_config"].get_engine().sync_engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if any(fragment in statement for fragment in BACKGROUND):
            return  # the instance's own periodic work, not a request's
        self.count += 1
        if "FROM api_key" in statement:
            self.lookups += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def client_address() -> str:
    """A fresh documentation-range address for one test's requests (via X-Forwarded-For)."""
    return f"198.51.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def wrong_key() -> str:
    return "aak_" + secrets.token_urlsafe(32)


async def inside_one_window(margin: float = 20.0) -> None:
    """Counts are per wall-clock minute: if this one is about to end, start the burst in the next."""
    left = 60 - time.time() % 60
    if left < margin:
        await asyncio.sleep(left + 0.2)


def fast_settings(**extra: Any) -> dict[str, Any]:
    return {
        "app__trusted_proxies": ("127.0.0.1/32",),
        "app__auth_failures_per_minute": LIMIT,
        "runs__reaper_interval": 3600.0,
        **extra,
    }


@pytest.fixture
async def pair(instance_factory: InstanceFactory) -> tuple[Instance, Instance]:
    return await instance_factory("af-a", **fast_settings()), await instance_factory("af-b", **fast_settings())


async def get(client: httpx.AsyncClient, address: str, key: str | bytes | None, **headers: Any) -> httpx.Response:
    sent: list[tuple[str, str | bytes]] = [("X-Forwarded-For", address)]
    if key is not None:
        sent.append(("X-API-Key", key))
    sent += list(headers.items())
    return await client.get(API, headers=sent)


async def insert_key(servers: TestServers, plaintext: str) -> None:
    """A key row for a plaintext of our choosing (as if `keys create` had made it)."""
    config = build_alchemy_config(make_settings(servers, "key-maker"))
    digest = hash_key(plaintext)
    try:
        async with config.get_session() as db:
            await ApiKeyService(session=db).create(
                ApiKey(name=f"chosen-{secrets.token_hex(6)}", key_hash=digest, fingerprint=fingerprint(digest)),
                auto_commit=True,
            )
    finally:
        await config.get_engine().dispose()


def assert_limited(resp: httpx.Response) -> None:
    body = assert_problem(resp, 429, "RATE_LIMITED")
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert "failed authentications" in body["detail"]


async def test_failures_are_limited_across_instances_without_database_work(
    pair: tuple[Instance, Instance], api_key: str, valkey: Valkey
) -> None:
    a, b = pair
    address, neighbour = client_address(), client_address()
    on_a, on_b = Statements(a), Statements(b)
    await inside_one_window()
    async with a.client() as ca, b.client() as cb:
        # A valid key seen on A before the flood: A knows it.
        assert (await get(ca, address, api_key)).status_code == 200
        before = on_a.count + on_b.count
        statuses = [(await get(ca if i % 2 else cb, address, wrong_key())).status_code for i in range(LIMIT)]
        assert statuses == [401] * LIMIT
        assert on_a.count + on_b.count - before == LIMIT  # one lookup each, no more
        looked_up = on_a.count + on_b.count
        for i in range(30):
            assert_limited(await get(ca if i % 2 else cb, address, wrong_key()))
        # Over the limit: no statement at all, on either instance, for 30 more distinct keys.
        assert on_a.count + on_b.count == looked_up
        # The shared count says so.
        window = int(time.time() // 60) * 60
        assert int(await valkey.get(counter_key(f"authfail:{address}", window)) or 0) >= LIMIT + 1
        # Another address has its own budget; the blocked one keeps the key A already verified.
        assert_problem(await get(cb, neighbour, wrong_key()), 401, "UNAUTHORIZED")
        assert (await get(ca, address, api_key)).status_code == 200
        # ... but B, which never saw that key, would need the database for it: refused like any unknown key.
        assert_limited(await get(cb, address, api_key))
        # A missing key is not a guess: still a plain 401.
        assert_problem(await get(cb, address, None), 401, "UNAUTHORIZED")
    on_a.close()
    on_b.close()


async def test_a_verified_key_is_rechecked_outside_the_limit(
    servers: TestServers, instance_factory: InstanceFactory
) -> None:
    """A neighbour behind the flooding address keeps working after its cache entry goes stale (re-checked in
    Postgres, not refused as a guess), and a revoked key still stops working."""
    name = f"neighbour-{secrets.token_hex(4)}"
    key = await create_api_key(servers, name)
    inst = await instance_factory("af-stale", **fast_settings(app__auth_cache_ttl=0.3))
    stmts = Statements(inst)
    address = client_address()
    await inside_one_window()
    async with inst.client() as c:
        assert (await get(c, address, key)).status_code == 200
        for _ in range(LIMIT):
            await get(c, address, wrong_key())
        assert_limited(await get(c, address, wrong_key()))
        lookups = stmts.lookups

        async def rechecked() -> bool:
            resp = await get(c, address, key)
            assert resp.status_code == 200, resp.text
            return stmts.lookups > lookups

        await wait_for(rechecked, timeout=10, what="the stale key re-checked in Postgres")
        await revoke(servers, name)

        async def refused() -> bool:
            return (await get(c, address, key)).status_code in (401, 429)

        await wait_for(refused, timeout=10, what="the revoked key refused")
    stmts.close()


async def test_a_concurrent_flood_reaches_postgres_at_most_limit_times(
    pair: tuple[Instance, Instance], api_key: str
) -> None:
    a, b = pair
    address = client_address()
    on_a, on_b = Statements(a), Statements(b)
    await inside_one_window()
    limits = httpx.Limits(max_connections=40)
    async with a.client(limits=limits) as ca, b.client(limits=limits) as cb:
        responses = await asyncio.gather(*(get(ca if i % 2 else cb, address, wrong_key()) for i in range(80)))
    statuses = sorted(r.status_code for r in responses)
    # Counted before the lookup: exactly LIMIT lookups, whatever the interleaving.
    assert statuses == [401] * LIMIT + [429] * (80 - LIMIT)
    assert on_a.count + on_b.count == LIMIT
    on_a.close()
    on_b.close()


async def test_a_valid_key_gets_its_count_back(pair: tuple[Instance, Instance], api_key: str) -> None:
    a, b = pair
    address = client_address()
    await inside_one_window()
    async with a.client() as ca, b.client() as cb:
        # LIMIT - 1 failures, then a valid key on an instance that must look it up: its count is refunded.
        for _ in range(LIMIT - 1):
            assert (await get(ca, address, wrong_key())).status_code == 401
        assert (await get(cb, address, api_key)).status_code == 200
        assert (await get(cb, address, wrong_key())).status_code == 401
        assert_limited(await get(ca, address, wrong_key()))


async def test_unknown_keys_are_cached_negatively_and_bounded(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory(
        "af-neg", **fast_settings(app__auth_failures_per_minute=0, app__auth_negative_cache_size=20)
    )
    stmts = Statements(inst)
    address = client_address()
    async with inst.client() as c:
        assert (await get(c, address, api_key)).status_code == 200
        repeated = wrong_key()
        before = stmts.count
        for _ in range(20):
            assert_problem(await get(c, address, repeated), 401, "UNAUTHORIZED")
        assert stmts.count - before == 1  # looked up once
        # 100 distinct unknown keys overflow the negative cache: least recently used out, one at a time ...
        flood = [wrong_key() for _ in range(100)]
        for key in flood:
            assert (await get(c, address, key)).status_code == 401
        before = stmts.count
        for key in flood[-10:]:
            assert (await get(c, address, key)).status_code == 401
        assert stmts.count == before  # ... so the newest are still known, nothing was cleared
        # ... and never push out a valid key: the positive cache is a separate one (the list itself is a query).
        lookups = stmts.lookups
        assert (await get(c, address, api_key)).status_code == 200
        assert stmts.lookups == lookups
    stmts.close()


async def test_a_new_key_works_on_every_instance_within_the_negative_ttl(
    servers: TestServers, instance_factory: InstanceFactory
) -> None:
    # Polling an unknown key counts as failures too: a budget that polling cannot spend.
    settings = fast_settings(app__auth_negative_cache_ttl=1.0, app__auth_failures_per_minute=1000)
    one = await instance_factory("af-new-1", **settings)
    two = await instance_factory("af-new-2", **settings)
    address = client_address()
    key = "aak_" + secrets.token_urlsafe(32)
    async with one.client() as c1, two.client() as c2:
        # Both instances now know this key as unknown ...
        assert (await get(c1, address, key)).status_code == 401
        assert (await get(c2, address, key)).status_code == 401
        await insert_key(servers, key)  # ... then it is created

        async def works(client: httpx.AsyncClient) -> bool:
            return (await get(client, address, key)).status_code == 200

        await wait_for(lambda: works(c1), timeout=10, interval=0.2, what="the new key on instance 1")
        await wait_for(lambda: works(c2), timeout=10, interval=0.2, what="the new key on instance 2")


@pytest.mark.faults
async def test_valkey_down_counts_locally_never_a_query_per_request(
    servers: TestServers, instance_factory: InstanceFactory, valkey: Valkey
) -> None:
    if not servers.can_inject_faults:
        pytest.skip("needs the embedded servers (TEST_DATABASE_URL / TEST_VALKEY_URL point at external ones)")
    inst = await instance_factory("af-down", **fast_settings())
    stmts = Statements(inst)
    address = client_address()
    await inside_one_window(margin=30)
    async with inst.client() as c:
        servers.stop_valkey()
        try:
            before = stmts.count
            statuses = [(await get(c, address, wrong_key())).status_code for _ in range(40)]
            assert statuses == [401] * LIMIT + [429] * (40 - LIMIT)
            assert stmts.count - before == LIMIT
            repeated = wrong_key()
            other = client_address()
            assert (await get(c, other, repeated)).status_code == 401
            looked_up = stmts.count
            for _ in range(3):  # known unknown: the negative cache answers, Valkey or not
                assert (await get(c, other, repeated)).status_code == 401
            assert stmts.count == looked_up
        finally:
            servers.start_valkey()

        async def valkey_back() -> bool:
            try:
                return bool(await valkey.ping())
            except Exception:
                return False

        await wait_for(valkey_back, timeout=20, what="Valkey restarted")
    stmts.close()


@pytest.mark.parametrize(
    "headers",
    [
        [("X-API-Key", "é".encode("latin-1") * 10)],
        [("X-API-Key", "ключ".encode())],
        [("X-API-Key", b"aak_\xff\xfe\x80")],
        [("X-API-Key", "aak_ with space")],
        [("X-API-Key", "aak_\ttab")],
        [("X-API-Key", "a" * 300)],
        [("Authorization", "Bearer " + "A" * 8000)],
        [("Authorization", b"Bearer \xc3\xa9\xc3\xa9")],
        [("X-API-Key", "aak_x"), ("X-Forwarded-For", b"not an address, \xe9\xff, [::1")],
        [("X-API-Key", "aak_x"), ("X-Forwarded-For", ", ".join(["1.1.1.1"] * 500))],
        [("X-API-Key", "aak_x"), ("Forwarded", 'for="[::1;proto=;;,,')],
    ],
)
async def test_bad_input_is_401_without_a_query(instance_factory: InstanceFactory, headers: list[Any]) -> None:
    inst = await instance_factory("af-bad", **fast_settings(app__auth_failures_per_minute=1000))
    stmts = Statements(inst)
    async with inst.client() as c:
        for _ in range(2):  # the malformed ones twice, the well-formed unknown one from the cache the 2nd time
            resp = await c.get(API, headers=headers)
            assert resp.status_code == 401, resp.text
            assert_problem(resp, 401, "UNAUTHORIZED")
    expected = 1 if headers[0] == ("X-API-Key", "aak_x") else 0
    assert stmts.count == expected
    stmts.close()
