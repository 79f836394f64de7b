"""TRUSTED_PROXIES end to end: X-Forwarded-For is believed only from trusted peers, and the access log and the
failed-authentication limit both use the address it resolves to."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pytest
from valkey.asyncio import Valkey

from app.lib.valkey.rate_limiter import counter_key
from tests.helpers import assert_problem, wait_for
from tests.instances import InstanceFactory
from tests.integration.test_logging import json_lines
from tests.processes import GranianProcess
from tests.servers import TestServers

API = "/api/v1/sessions"


def fresh_address() -> str:
    return f"203.0.113.{secrets.randbelow(254) + 1}"


def wrong_key() -> str:
    return "aak_" + secrets.token_urlsafe(32)


def window_key(address: str) -> str:
    return counter_key(f"authfail:{address}", int(time.time() // 60) * 60)


async def count(valkey: Valkey, address: str) -> int:
    return int(await valkey.get(window_key(address)) or 0)


async def test_forwarded_for_is_ignored_without_trusted_proxies(
    instance_factory: InstanceFactory, valkey: Valkey
) -> None:
    inst = await instance_factory("xff-untrusted", app__auth_failures_per_minute=1000)
    spoofed = fresh_address()
    if 60 - time.time() % 60 < 5:
        await asyncio.sleep(6)
    before = await count(valkey, "127.0.0.1")
    async with inst.client() as c:
        for _ in range(3):
            resp = await c.get(API, headers={"X-API-Key": wrong_key(), "X-Forwarded-For": spoofed})
            assert_problem(resp, 401, "UNAUTHORIZED")
    # Counted against the real peer; the address the client wrote got nothing.
    assert await count(valkey, spoofed) == 0
    assert await count(valkey, "127.0.0.1") >= before + 3


async def test_trusted_proxy_resolves_forwarded_for_and_forwarded(
    instance_factory: InstanceFactory, valkey: Valkey
) -> None:
    inst = await instance_factory(
        "xff-trusted", app__trusted_proxies=("127.0.0.0/8", "::1/128"), app__auth_failures_per_minute=1000
    )
    client, spoofed, via_forwarded = fresh_address(), fresh_address(), "2001:db8:1:2::77"
    if 60 - time.time() % 60 < 5:
        await asyncio.sleep(6)
    async with inst.client() as c:
        # What the client wrote itself (left) is ignored; the hop nginx appended (right) is the client.
        for _ in range(2):
            await c.get(API, headers={"X-API-Key": wrong_key(), "X-Forwarded-For": f"{spoofed}, {client}"})
        await c.get(API, headers={"X-API-Key": wrong_key(), "Forwarded": f'for="[{via_forwarded}]:4711";proto=http'})
    assert await count(valkey, client) == 2
    assert await count(valkey, spoofed) == 0
    assert await count(valkey, "2001:db8:1:2::/64") == 1


@pytest.mark.processes
async def test_logs_and_limit_use_the_resolved_address(servers: TestServers, tmp_path: Path) -> None:
    proc = await asyncio.to_thread(
        GranianProcess.start,
        servers,
        f"xff-{secrets.token_hex(3)}",
        tmp_path,
        TRUSTED_PROXIES="127.0.0.1/32",
        AUTH_FAILURES_PER_MINUTE="3",
        LOG_ACCESS="true",
        LOG_FORMAT="json",
    )
    try:
        flooder, neighbour = fresh_address(), fresh_address()
        if 60 - time.time() % 60 < 15:
            await asyncio.sleep(60 - time.time() % 60 + 0.2)
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as c:
            statuses = []
            for n in range(5):
                resp = await c.get(
                    API,
                    headers={"X-API-Key": wrong_key(), "X-Forwarded-For": flooder, "X-Request-ID": f"flood-{n}"},
                )
                statuses.append(resp.status_code)
            assert statuses == [401, 401, 401, 429, 429]
            limited = resp
            assert_problem(limited, 429, "RATE_LIMITED")
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            other = await c.get(
                API, headers={"X-API-Key": wrong_key(), "X-Forwarded-For": neighbour, "X-Request-ID": "neighbour"}
            )
            assert_problem(other, 401, "UNAUTHORIZED")
            # Malformed: no error, the peer (the proxy) is the address.
            odd = await c.get(API, headers={"X-Forwarded-For": "not-an-ip", "X-Request-ID": "odd"})
            assert_problem(odd, 401, "UNAUTHORIZED")

        async def logged() -> bool:
            ids = {line.get("request_id") for line in json_lines(proc.log_path) if line.get("event") == "request"}
            return {"flood-4", "neighbour", "odd"} <= ids

        await wait_for(logged, timeout=10, what="the access lines")
        lines = {line["request_id"]: line for line in json_lines(proc.log_path) if line.get("event") == "request"}
        assert [lines[f"flood-{n}"]["client"] for n in range(5)] == [flooder] * 5
        assert [lines[f"flood-{n}"]["status"] for n in range(5)] == statuses
        assert lines["neighbour"]["client"] == neighbour
        assert lines["odd"]["client"] == "127.0.0.1"
    finally:
        await asyncio.to_thread(proc.terminate)
