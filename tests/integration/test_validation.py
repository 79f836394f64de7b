"""Bad input is always a 4xx problem+json (VALIDATION_ERROR or REQUEST_TOO_LARGE), never a 5xx (SPEC §3, §6)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import assert_problem
from tests.instances import Instance

API = "/api/v1/sessions"
MAX_METADATA = 16 * 1024
MAX_BODY = 1024 * 1024


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def metadata_of_size(size: int) -> dict[str, str]:
    """A metadata object whose compact JSON is exactly `size` bytes."""
    overhead = len(compact({"k": ""}))
    meta = {"k": "x" * (size - overhead)}
    assert len(compact(meta)) == size
    return meta


@pytest.fixture
async def client(shared_instance: Instance, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with shared_instance.client(api_key) as c:
        yield c


@pytest.fixture
async def sid(client: httpx.AsyncClient) -> str:
    resp = await client.post(API, json={"title": "target"})
    assert resp.status_code == 201, resp.text
    value: str = resp.json()["id"]
    return value


BAD_CREATE_BODIES: list[tuple[str, bytes]] = [
    ("not json", b"{not json"),
    ("truncated", b'{"title": "x"'),
    ("array", b"[]"),
    ("string", b'"title"'),
    ("number", b"42"),
    ("title wrong type", b'{"title": 5}'),
    ("title too long", compact({"title": "t" * 501})),
    ("tags not a list", b'{"tags": "a"}'),
    ("tag not a string", b'{"tags": [1]}'),
    ("empty tag", b'{"tags": [""]}'),
    ("tag too long", compact({"tags": ["x" * 65]})),
    ("too many tags", compact({"tags": [f"t{i}" for i in range(33)]})),
    ("metadata not an object", b'{"metadata": [1, 2]}'),
    ("metadata a string", b'{"metadata": "x"}'),
    ("metadata too large", compact({"metadata": metadata_of_size(MAX_METADATA + 1)})),
    ("unknown field", b'{"title": "x", "colour": "red"}'),
    ("bad permission_mode", b'{"permission_mode": "yolo"}'),
    ("bad model", b'{"model": "has spaces in it"}'),
    ("empty model", b'{"model": ""}'),
    ("nul in title", compact({"title": "a\u0000b"})),
    ("nul in tag", compact({"tags": ["a\u0000b"]})),
    ("nul in metadata", compact({"metadata": {"k": "a\u0000b"}})),
    ("nul in metadata key", compact({"metadata": {"a\u0000b": 1}})),
    ("huge number in metadata", b'{"metadata": {"n": 1e400}}'),
    ("lone surrogate", b'{"title": "\\ud800"}'),
    ("invalid utf-8", b'{"title": "\xff\xfe"}'),
    ("deeply nested metadata", b'{"metadata": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}"),
    ("deep array metadata", b'{"metadata": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"),
    ("metadata nested 65 levels", b'{"metadata": ' + b"[" * 64 + b"]" * 64 + b"}"),
]


@pytest.mark.parametrize(("case", "body"), BAD_CREATE_BODIES, ids=[c for c, _ in BAD_CREATE_BODIES])
async def test_bad_create_body_is_validation_error(client: httpx.AsyncClient, case: str, body: bytes) -> None:
    resp = await client.post(API, content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(resp, 400, "VALIDATION_ERROR")
    assert problem.get("detail") or problem.get("errors"), f"{case}: no explanation in {problem}"
    # Nothing was created.
    assert (await client.get(API)).json()["total"] == 0


BAD_PATCH_BODIES: list[tuple[str, bytes]] = [
    ("not json", b"{"),
    ("array", b"[1]"),
    ("tags null", b'{"tags": null}'),
    ("metadata null", b'{"metadata": null}'),
    ("permission_mode null", b'{"permission_mode": null}'),
    ("unknown field", b'{"status": "completed"}'),
    ("version is not writable", b'{"version": 7}'),
    ("too many tags", compact({"tags": [str(i) for i in range(33)]})),
    ("tag too long", compact({"tags": ["y" * 65]})),
    ("metadata too large", compact({"metadata": metadata_of_size(MAX_METADATA + 1)})),
    ("nul in title", compact({"title": "\u0000"})),
    ("nul in metadata", compact({"metadata": {"k": "\u0000"}})),
]


@pytest.mark.parametrize(("case", "body"), BAD_PATCH_BODIES, ids=[c for c, _ in BAD_PATCH_BODIES])
async def test_bad_patch_body_is_validation_error(client: httpx.AsyncClient, sid: str, case: str, body: bytes) -> None:
    resp = await client.patch(f"{API}/{sid}", content=body, headers={"Content-Type": "application/json"})
    assert_problem(resp, 400, "VALIDATION_ERROR")
    after = (await client.get(f"{API}/{sid}")).json()
    assert after["version"] == 1, f"{case} changed the session"
    assert after["title"] == "target"


async def test_limits_are_inclusive(client: httpx.AsyncClient, sid: str) -> None:
    tags = [f"{i:02d}" + "t" * 62 for i in range(32)]
    assert all(len(t) == 64 for t in tags)
    meta = metadata_of_size(MAX_METADATA)
    resp = await client.post(API, json={"tags": tags, "metadata": meta, "title": "t" * 500})
    assert resp.status_code == 201, resp.text[:300]
    assert resp.json()["tags"] == tags
    assert resp.json()["metadata"] == meta

    patched = await client.patch(f"{API}/{sid}", json={"tags": tags, "metadata": meta})
    assert patched.status_code == 200, patched.text[:300]
    assert patched.json()["metadata"] == meta
    assert patched.json()["version"] == 2


async def test_metadata_limit_counts_compact_utf8_bytes(client: httpx.AsyncClient) -> None:
    # Multi-byte characters count by their UTF-8 bytes; whitespace in the request does not count.
    overhead = len(compact({"k": ""}))
    chars = (MAX_METADATA - overhead) // 3
    pad = MAX_METADATA - overhead - chars * 3
    meta = {"k": "€" * chars + "x" * pad}
    assert len(compact(meta)) == MAX_METADATA
    pretty = json.dumps({"metadata": meta}, indent=8, ensure_ascii=True).encode()
    ok = await client.post(API, content=pretty, headers={"Content-Type": "application/json"})
    assert ok.status_code == 201, ok.text[:300]
    assert ok.json()["metadata"] == meta

    over = {"k": "€" * chars + "x" * (pad + 1)}
    assert len(compact(over)) == MAX_METADATA + 1
    assert_problem(await client.post(API, json={"metadata": over}), 400, "VALIDATION_ERROR")


async def test_body_over_one_mib_is_413(client: httpx.AsyncClient, sid: str) -> None:
    big = compact({"title": "x", "metadata": {"k": "x" * MAX_BODY}})
    for method, url in (("POST", API), ("PATCH", f"{API}/{sid}"), ("POST", f"{API}/{sid}/fork")):
        resp = await client.request(method, url, content=big, headers={"Content-Type": "application/json"})
        assert_problem(resp, 413, "REQUEST_TOO_LARGE")


async def test_chunked_body_over_one_mib_is_413(client: httpx.AsyncClient) -> None:
    chunk = b" " * 65536

    async def body() -> AsyncIterator[bytes]:
        yield b'{"title": "x"'
        for _ in range(MAX_BODY // len(chunk) + 1):
            yield chunk
        yield b"}"

    resp = await client.post(API, content=body(), headers={"Content-Type": "application/json"})
    assert_problem(resp, 413, "REQUEST_TOO_LARGE")


async def test_body_of_exactly_one_mib_is_not_413(client: httpx.AsyncClient) -> None:
    base = b'{"title": "x"}'
    body = base[:-1] + b" " * (MAX_BODY - len(base)) + b"}"
    assert len(body) == MAX_BODY
    resp = await client.post(API, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 201, resp.text[:300]


@pytest.mark.parametrize("path", ["not-a-uuid", "1234", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5", "%00"])
async def test_bad_session_id_in_path_is_4xx_problem(client: httpx.AsyncClient, path: str) -> None:
    for method, url in (
        ("GET", f"{API}/{path}"),
        ("PATCH", f"{API}/{path}"),
        ("DELETE", f"{API}/{path}"),
        ("POST", f"{API}/{path}/fork"),
        ("GET", f"{API}/{path}/messages"),
    ):
        resp = await client.request(method, url, json={} if method in {"PATCH", "POST"} else None)
        assert_problem(resp, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"offset": "-1"},
        {"offset": "x"},
        {"offset": str(2**53 + 1)},
        {"tag": ""},
        {"offset": str(10**30)},
        {"status": "sleeping"},
        {"tag": "x" * 65},
        {"tag": "a\u0000b"},
    ],
)
async def test_bad_list_query_is_validation_error(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert_problem(await client.get(API, params=params), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "-3"}, {"offset": "-1"}, {"limit": "x"}, {"offset": str(10**30)}, {"limit": "1001"}],
)
async def test_bad_messages_query_is_validation_error(
    client: httpx.AsyncClient, sid: str, params: dict[str, str]
) -> None:
    assert_problem(await client.get(f"{API}/{sid}/messages", params=params), 400, "VALIDATION_ERROR")


async def test_large_but_valid_offset_is_an_empty_page(client: httpx.AsyncClient, sid: str) -> None:
    resp = await client.get(API, params={"offset": str(2**53)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["items"] == []
    assert resp.json()["total"] == 1


@pytest.mark.parametrize(
    "value",
    [b"abc", b'"abc"', b'"1.5"', b'"-1"', b'W/"x"', b"\xb2", b'"\xb2"', b'"\xd9\xa1"', b'""'],
)
async def test_bad_if_match_is_validation_error(client: httpx.AsyncClient, sid: str, value: bytes) -> None:
    resp = await client.patch(f"{API}/{sid}", json={"title": "nope"}, headers=[(b"If-Match", value)])
    assert_problem(resp, 400, "VALIDATION_ERROR")
    after = (await client.get(f"{API}/{sid}")).json()
    assert after["title"] == "target"
    assert after["version"] == 1


async def test_wrong_content_type_is_4xx(client: httpx.AsyncClient) -> None:
    resp = await client.post(API, content=b"title=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


async def test_bad_fork_body_is_validation_error(client: httpx.AsyncClient, sid: str) -> None:
    for body in (b"{", b'{"title": 1}', b'{"model": "x"}', compact({"title": "t" * 501}), b"[]"):
        resp = await client.post(f"{API}/{sid}/fork", content=body, headers={"Content-Type": "application/json"})
        assert_problem(resp, 400, "VALIDATION_ERROR")
    assert (await client.get(API)).json()["total"] == 1


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient, sid: str) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    not_allowed = await client.put(f"{API}/{sid}", json={})
    assert not_allowed.status_code == 405
    assert not_allowed.headers["content-type"].startswith("application/problem+json")


async def test_unusual_but_valid_metadata_round_trips(a: Instance, b: Instance, api_key: str) -> None:
    meta = {
        "big_int": 2**62,
        "negative": -(2**62),
        "float": 0.25,
        "tiny": 5e-324,
        "unicode": "snow ☃ and emoji 🎉 and \u2028 separator",
        "escapes": 'quote " backslash \\ tab \t newline \n',
        "literal backslash-u": "\\u0000 is text here",
        "empty": {},
        "nested": [[[[{"deep": True}]]]],
        "null": None,
        "": "empty key",
        "deep": json.loads("[" * 62 + "]" * 62),
    }
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        resp = await ca.post(API, json={"metadata": meta, "title": "☃ \u2028 🎉", "tags": ["☃", "a b", "x/y"]})
        assert resp.status_code == 201, resp.text[:300]
        sid = resp.json()["id"]
        assert resp.json()["metadata"] == meta
        # From the cache on b, then from Postgres after the cache entry is gone.
        cached = await cb.get(f"{API}/{sid}")
        assert cached.json() == resp.json()
        listed = (await cb.get(API, params={"tag": "☃"})).json()
        assert [s["id"] for s in listed["items"]] == [sid]
        assert listed["items"][0]["metadata"] == meta
        assert listed["items"][0]["title"] == "☃ \u2028 🎉"


NUL_RUN_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("nul in prompt", {"prompt": "a\u0000b"}),
    ("nul in system_prompt", {"prompt": "hi", "system_prompt": "be\u0000brief"}),
]


@pytest.mark.parametrize(("case", "body"), NUL_RUN_BODIES, ids=[c for c, _ in NUL_RUN_BODIES])
async def test_nul_in_run_text_is_validation_error(
    client: httpx.AsyncClient, sid: str, case: str, body: dict[str, Any]
) -> None:
    """Found by the fuzzer: U+0000 in a prompt reached Postgres (text/jsonb refuse it) and /query/single gave 500."""
    for url, payload in (
        ("/api/v1/query/single", body),
        ("/api/v1/query", body),
        ("/api/v1/query", {**body, "session_id": sid}),
        (f"{API}/{sid}/resume", body),
    ):
        assert_problem(await client.post(url, json=payload), 400, "VALIDATION_ERROR")
    after = (await client.get(f"{API}/{sid}")).json()
    assert after["status"] == "idle", case
    assert after["version"] == 1
    assert (await client.get(API)).json()["total"] == 1, "no session was created"


async def test_nul_in_answer_is_validation_error(client: httpx.AsyncClient, sid: str) -> None:
    resp = await client.post(f"{API}/{sid}/answer", json={"answer": "a\u0000b"})
    assert_problem(resp, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "output_format",
    [{"type": "json_schema", "schema": {"a\u0000b": {}}}, {"type": "json_schema", "schema": {"enum": ["x\u0000"]}}],
    ids=["nul-in-key", "nul-in-string"],
)
async def test_nul_in_output_format_is_validation_error_and_starts_nothing(
    client: httpx.AsyncClient, sid: str, output_format: dict[str, Any]
) -> None:
    """jsonb cannot hold U+0000: found by the fuzz suite as a 500 from the run's INSERT."""
    body = {"prompt": "hi", "output_format": output_format}
    problem = assert_problem(await client.post(f"{API}/{sid}/runs", json=body), 400, "VALIDATION_ERROR")
    assert "U+0000" in json.dumps(problem["errors"])
    assert_problem(await client.post("/api/v1/query", json=body), 400, "VALIDATION_ERROR")
    runs = (await client.get(f"{API}/{sid}/runs")).json()
    assert runs["total"] == 0
    chat = await client.post(
        "/v1/chat/completions",
        json={
            "model": "demo",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": output_format["schema"]}},
        },
    )
    assert chat.status_code == 400, chat.text
