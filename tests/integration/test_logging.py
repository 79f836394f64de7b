"""Structured logs and X-Request-ID: JSON lines from a real Granian process carry request_id, instance_id,
session_id and run_id; the request id is echoed or generated on every response; API keys never reach a line."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import collect_sse, wait_for
from tests.instances import Instance
from tests.processes import GranianProcess
from tests.servers import TestServers

API = "/api/v1/sessions"
HEX_ID = re.compile(r"[0-9a-f]{32}")


# -- X-Request-ID --------------------------------------------------------------------------------------


async def test_request_id_is_echoed_when_sane(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c:
        for rid in ["abc-123", "a" * 128, "trace.id:1/2+3=4@x_y"]:
            r = await c.get(API, headers={"X-Request-ID": rid})
            assert r.status_code == 200
            assert r.headers["x-request-id"] == rid


async def test_request_id_on_every_response_including_errors(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client() as anon, shared_instance.client(api_key) as c:
        cases = [
            await anon.get(API, headers={"X-Request-ID": "r-401"}),  # auth middleware
            await c.get("/no/such/route", headers={"X-Request-ID": "r-404"}),  # router
            await c.get(f"{API}/not-a-uuid", headers={"X-Request-ID": "r-400"}),  # path parameter
            await c.post(API, json={"tags": "nope"}, headers={"X-Request-ID": "r-422"}),  # body validation
            await c.post(API, content=b"x" * (1024 * 1024 + 1), headers={"X-Request-ID": "r-413"}),  # body limit
            await c.get("/health/live", headers={"X-Request-ID": "r-200"}),
            await c.get("/metrics", headers={"X-Request-ID": "r-metrics"}),
        ]
        for r in cases:
            expected = r.request.headers["x-request-id"]
            assert r.headers.get("x-request-id") == expected, (r.status_code, r.text[:200])
        assert [r.status_code for r in cases] == [401, 404, 400, 400, 413, 200, 200]


async def test_request_id_generated_when_absent_or_insane(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c:
        generated = [(await c.get(API)).headers["x-request-id"] for _ in range(2)]
        assert all(HEX_ID.fullmatch(g) for g in generated)
        assert generated[0] != generated[1]
        for bad in ["a" * 129, "has space", 'quote"d', "semi;colon", "new\\nline", ""]:
            r = await c.get(API, headers={"X-Request-ID": bad})
            assert r.status_code == 200
            assert HEX_ID.fullmatch(r.headers["x-request-id"]), bad
        # Not ASCII at all: still a clean 200 with a fresh id.
        r = await c.get(API, headers=[("X-Request-ID", "é".encode())])
        assert r.status_code == 200
        assert HEX_ID.fullmatch(r.headers["x-request-id"])


# -- JSON log lines from a real process ------------------------------------------------------------------


@pytest.fixture
def logged_process(servers: TestServers, tmp_path: Path) -> Iterator[GranianProcess]:
    proc = GranianProcess.start(
        servers, f"log-{secrets.token_hex(3)}", tmp_path, LOG_LEVEL="INFO", LOG_FORMAT="json", LOG_ACCESS="true"
    )
    yield proc
    proc.terminate()


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.processes
async def test_json_lines_carry_the_ids_and_never_the_key(logged_process: GranianProcess, api_key: str) -> None:
    proc = logged_process
    bogus_key = "aak_" + secrets.token_urlsafe(32)
    async with httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": api_key}, timeout=30) as c:
        created = await c.post(API, json={"title": "logged"}, headers={"X-Request-ID": "log-create"})
        sid = created.json()["id"]
        assert (await c.get(f"{API}/{sid}", headers={"X-Request-ID": "log-get"})).status_code == 200
        async with c.stream(
            "POST", f"{API}/{sid}/resume", json={"prompt": "hello logs"}, headers={"X-Request-ID": "log-run"}
        ) as stream:
            assert stream.status_code == 200
            run_id = stream.headers["x-run-id"]
            events = await collect_sse(stream)
        assert events[-1].event == "done"
        # Credentials in both forms, valid and not: none of them may be written anywhere.
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as anon:
            assert (await anon.get(API, headers={"Authorization": f"Bearer {api_key}"})).status_code == 200
            assert (await anon.get(API, headers={"X-API-Key": bogus_key})).status_code == 401
            assert (await anon.get(f"{API}?tag={bogus_key}")).status_code == 401

    def finished() -> list[dict[str, Any]]:
        return [line for line in json_lines(proc.log_path) if line.get("event") == "run finished"]

    async def run_logged() -> list[dict[str, Any]]:
        return finished()

    await wait_for(run_logged, timeout=10, what="the `run finished` line")

    async def access_logged() -> bool:
        return sum(1 for line in json_lines(proc.log_path) if line.get("event") == "request") >= 6

    await wait_for(access_logged, timeout=10, what="the access lines")
    lines = json_lines(proc.log_path)
    assert lines
    for line in lines:
        assert line["instance_id"] == proc.instance_id, line
        assert {"event", "level", "timestamp"} <= line.keys(), line

    def one(event: str, request_id: str) -> dict[str, Any]:
        found = [x for x in lines if x.get("event") == event and x.get("request_id") == request_id]
        assert len(found) == 1, (event, request_id, found)
        return found[0]

    get_line = one("request", "log-get")
    assert get_line["session_id"] == sid
    assert get_line["method"] == "GET"
    assert get_line["path"] == f"{API}/{sid}"
    assert get_line["status"] == 200
    assert isinstance(get_line["duration_ms"], float | int)
    assert one("request", "log-create")["status"] == 201

    run_request = one("request", "log-run")
    assert run_request["session_id"] == sid
    assert run_request["run_id"] == run_id
    started = one("run started", "log-run")
    assert started["session_id"] == sid
    assert started["run_id"] == run_id
    (done,) = finished()
    assert done["run_id"] == run_id
    assert done["session_id"] == sid
    assert done["reason"] == "completed"

    raw = proc.log_path.read_text(errors="replace")
    assert api_key not in raw
    assert bogus_key not in raw
    assert "hello logs" not in raw  # prompts are not logged either
