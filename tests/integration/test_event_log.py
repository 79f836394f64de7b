"""`EventLog` appends on real Valkey, both ways it is built: through a `PipelinedGetter` of its own (one node: every
writer's appends of a moment in one write) and one script call each (a cluster). Many writers at once each get
their entries' ids in order, exactly the entries the stream holds; a Valkey that lost its scripts (restart, SCRIPT
FLUSH) is given the script again; a hung Valkey fails an append within the command bound, not never."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from valkey.asyncio import Valkey
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from app.lib.valkey import timeouts
from app.lib.valkey.client import ValkeyClients
from app.lib.valkey.event_log import EventLog
from tests.servers import TestServers

FIELDS = ("e", "d", "r")


@pytest.fixture(params=["pipelined", "one call each"])
async def log(request: pytest.FixtureRequest, servers: TestServers) -> AsyncIterator[EventLog]:
    # Appends one call each hold a pooled connection each while in flight (valkey-py's pool refuses more).
    clients = ValkeyClients.from_url(servers.valkey_url, socket_timeout=2.0, connect_timeout=1.0, max_connections=250)
    assert clients.appender is not None  # one node
    appender = clients.appender if request.param == "pipelined" else None
    yield EventLog(clients.main, clients.blocking, appender=appender)
    await clients.aclose()


def new_key() -> str:
    return f"agentapi:{{log-test-{secrets.token_hex(4)}}}:events"


async def test_many_writers_at_once_each_get_their_entries_ids_in_order(log: EventLog, valkey: Valkey) -> None:
    keys = [new_key() for _ in range(200)]

    async def writer(key: str) -> list[tuple[str, bytes]]:
        written: list[tuple[str, bytes]] = []
        for batch in range(10):
            datas = [f'{{"n":{batch * 3 + i}}}'.encode() for i in range(3)]
            values = [v for data in datas for v in (b"message", data, b"run-1")]
            ids = await log.append_values(key, FIELDS, values)
            assert len(ids) == 3
            written += zip(ids, datas, strict=True)
        return written

    results = await asyncio.gather(*(writer(key) for key in keys))
    for key, written in zip(keys, results, strict=True):
        stored = await valkey.xrange(key)
        assert [(eid.decode(), fields[b"d"]) for eid, fields in stored] == written
        assert [fields[b"e"] for _, fields in stored] == [b"message"] * 30
    await valkey.delete(*keys)


async def test_an_append_after_the_scripts_were_flushed_loads_the_script_again(log: EventLog, valkey: Valkey) -> None:
    key = new_key()
    first = await log.append_many(key, [{"e": "message", "d": b"1", "r": "run"}])
    await valkey.script_flush()
    second = await log.append_many(key, [{"e": "message", "d": b"2", "r": "run"}])
    assert [eid.decode() for eid, _ in await valkey.xrange(key)] == [*first, *second]
    await valkey.delete(key)


async def test_an_append_to_a_hung_valkey_fails_within_the_command_bound(servers: TestServers, log: EventLog) -> None:
    """SIGSTOP: connections accepted, no answers. The writer gets valkey's `TimeoutError` (which the recorder
    retries) within the bound, and appends work again once Valkey answers."""
    key = new_key()
    await log.append_many(key, [{"e": "message", "d": b"1", "r": "run"}])  # connected
    previous = timeouts.COMMAND_TIMEOUT
    timeouts.set_command_timeout(0.5)
    try:
        servers.pause_valkey()
        try:
            started = time.perf_counter()
            with pytest.raises(ValkeyTimeoutError):
                await log.append_many(key, [{"e": "message", "d": b"2", "r": "run"}])
            elapsed = time.perf_counter() - started
            assert 0.4 < elapsed < 3, elapsed
        finally:
            servers.resume_valkey()
        assert len(await log.append_many(key, [{"e": "message", "d": b"3", "r": "run"}])) == 1
    finally:
        timeouts.set_command_timeout(previous)
