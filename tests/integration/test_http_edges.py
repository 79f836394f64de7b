"""Issue 18 items 4, 9, 10, 11: metrics count every status as sent; If-Match lists and exact tags; request ids
shaped like API keys; HEAD on GET routes; an over-long request line."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
from pathlib import Path

import httpx
import pytest

from tests.helpers import PROBLEM_JSON, assert_problem
from tests.instances import Instance
from tests.processes import GranianProcess
from tests.servers import TestServers

API = "/api/v1/sessions"
HEX_ID = re.compile(r"[0-9a-f]{32}")


def requests_total(text: str, path: str, status: int, method: str = "GET") -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("agentapi_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        if f'path="{path}"' in labels and f'status_code="{status}"' in labels and f'method="{method}"' in labels:
            total += float(value)
    return total


# -- item 4: /metrics -------------------------------------------------------------------------------------


async def test_metrics_count_each_status_as_sent(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client() as anon, shared_instance.client(api_key) as c:
        before = (await anon.get("/metrics")).text
        for _ in range(3):
            assert (await anon.get(API)).status_code == 401
        missing = "00000000-0000-0000-0000-000000000000"
        assert (await c.get(f"{API}/{missing}")).status_code == 404
        assert (await c.get("/api/v1/no-such-route")).status_code == 404
        assert (await c.get(API)).status_code == 200
        after = (await anon.get("/metrics")).text
    assert requests_total(after, API, 401) - requests_total(before, API, 401) == 3
    assert requests_total(after, API, 200) - requests_total(before, API, 200) == 1
    one = "/api/v1/sessions/{session_id}"
    assert requests_total(after, one, 404) - requests_total(before, one, 404) == 1
    assert requests_total(after, one, 200) - requests_total(before, one, 200) == 0
    # A path no route matches is counted too, under one label (no unbounded label values).
    assert (
        sum(
            requests_total(after, p, 404) - requests_total(before, p, 404)
            for p in ("unmatched", "/api/v1/no-such-route")
        )
        == 1
    )
    assert 'path="/api/v1/no-such-route"' not in after


# -- item 9: If-Match -------------------------------------------------------------------------------------


async def test_if_match_list_matches_any_member_and_tags_compare_exactly(
    shared_instance: Instance, api_key: str
) -> None:
    async with shared_instance.client(api_key) as c:
        sid = (await c.post(API, json={"title": "v1"})).json()["id"]
        miss = await c.patch(f"{API}/{sid}", json={"title": "no"}, headers={"If-Match": '"2", "9"'})
        assert_problem(miss, 412, "VERSION_CONFLICT")
        hit = await c.patch(f"{API}/{sid}", json={"title": "v2"}, headers={"If-Match": '"9", "1"'})
        assert hit.status_code == 200, hit.text
        assert hit.json()["version"] == 2
        # "02" is another entity tag than "2": no match, nothing written.
        padded = await c.patch(f"{API}/{sid}", json={"title": "no"}, headers={"If-Match": '"02"'})
        assert padded.status_code == 412, padded.text
        assert padded.headers["content-type"].startswith(PROBLEM_JSON)
        # Weak tags still match (nginx with gzip on weakens the ETags it passes through).
        weak = await c.patch(f"{API}/{sid}", json={"title": "v3"}, headers={"If-Match": 'W/"7", W/"2"'})
        assert weak.status_code == 200, weak.text
        assert (await c.get(f"{API}/{sid}")).json() | {} == weak.json() | {}
        assert weak.json()["version"] == 3
        # A malformed list is still bad input.
        assert_problem(
            await c.patch(f"{API}/{sid}", json={"title": "no"}, headers={"If-Match": '"3", abc'}),
            400,
            "VALIDATION_ERROR",
        )
        assert (await c.get(f"{API}/{sid}")).json()["title"] == "v3"


# -- item 10: X-Request-ID shaped like a key ---------------------------------------------------------------


async def test_request_id_shaped_like_an_api_key_is_never_echoed(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c:
        for value in ("aak_" + secrets.token_urlsafe(32), api_key, f"req-{api_key}"):
            resp = await c.get(API, headers={"X-Request-ID": value})
            assert resp.status_code == 200
            echoed = resp.headers["x-request-id"]
            assert "aak_" not in echoed and api_key not in echoed
            assert HEX_ID.fullmatch(echoed), echoed
        # A sane id is still echoed.
        assert (await c.get(API, headers={"X-Request-ID": "trace-42"})).headers["x-request-id"] == "trace-42"


async def test_request_id_equal_to_the_bootstrap_key_is_not_echoed(
    instance_factory: object, servers: TestServers
) -> None:
    bootstrap = f"plain-secret-{secrets.token_hex(8)}"
    inst = await instance_factory("boot", app__api_key=bootstrap)  # type: ignore[operator]
    async with inst.client(bootstrap) as c:
        resp = await c.get(API, headers={"X-Request-ID": bootstrap})
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] != bootstrap
        assert HEX_ID.fullmatch(resp.headers["x-request-id"])


# -- item 11: HEAD and the request line ----------------------------------------------------------------------


async def test_head_answers_like_get_without_a_body(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c, shared_instance.client() as anon:
        sid = (await c.post(API, json={"title": "head"})).json()["id"]
        for client, path in ((c, f"{API}/{sid}"), (c, API), (anon, "/health/live"), (c, f"{API}/{sid}/messages")):
            got = await client.get(path)
            head = await client.head(path)
            assert head.status_code == got.status_code == 200, (path, head.status_code)
            assert head.content == b""
            assert head.headers["content-type"] == got.headers["content-type"]
            assert head.headers.get("etag") == got.headers.get("etag")
            assert "x-request-id" in head.headers
        # Errors too: the same status as GET, no body.
        head404 = await c.head(f"{API}/00000000-0000-0000-0000-000000000000")
        assert head404.status_code == 404 and head404.content == b""
        assert (await anon.head(API)).status_code == 401
        # A stream answers its headers and ends (it does not follow the run).
        head_events = await c.head(f"{API}/{sid}/events", timeout=10)
        assert head_events.status_code == (await c.get(f"{API}/{sid}/events", timeout=10)).status_code
        # Still 405 where there is no GET.
        assert (await c.head(f"{API}/{sid}/fork")).status_code == 405


async def test_over_long_request_line_is_a_problem_414(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c:
        resp = await c.get(API, params={"tag": "x" * 10_000})
        assert_problem(resp, 414, "URI_TOO_LONG")
        assert HEX_ID.fullmatch(resp.headers["x-request-id"])
        # Just under the bound: an ordinary answer.
        assert (await c.get(API, params={"tag": "x" * 60})).status_code == 200


def raw_get(base_url: str, target: str, key: str) -> tuple[int, dict[str, str], bytes]:
    """One GET over a plain socket: httpx refuses to send a query over 64 KiB."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.processes
async def test_granian_long_urls(servers: TestServers, api_key: str, tmp_path: Path) -> None:
    """Behind Granian: a URL over the app's 8 KiB bound gets the app's problem+json 414; from 65,535 bytes on,
    Granian (hyper) answers a bare 414 before the app sees the request (documented in README, Limits)."""
    proc = GranianProcess.start(servers, f"long-url-{secrets.token_hex(3)}", tmp_path)
    try:
        status, headers, body = await asyncio.to_thread(raw_get, proc.base_url, f"{API}?tag={'x' * 20_000}", api_key)
        assert status == 414
        assert headers["content-type"].startswith(PROBLEM_JSON)
        assert json.loads(body)["code"] == "URI_TOO_LONG"
        assert HEX_ID.fullmatch(headers["x-request-id"])
        status, headers, body = await asyncio.to_thread(raw_get, proc.base_url, f"{API}?tag={'x' * 70_000}", api_key)
        assert status == 414 and body == b""  # Granian's own answer
        status, _, _ = await asyncio.to_thread(raw_get, proc.base_url, f"{API}?tag={'x' * 60}", api_key)
        assert status == 200
        # HEAD behind Granian too: GET's status and headers, no body.
        async with httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": api_key}, timeout=30) as c:
            got, head = await c.get(API), await c.head(API)
            assert head.status_code == got.status_code == 200
            assert head.content == b""
            assert head.headers["content-length"] == got.headers["content-length"]
    finally:
        proc.terminate()
