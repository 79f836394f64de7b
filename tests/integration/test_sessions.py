"""Session CRUD over real HTTP against real Postgres and Valkey (SPEC §3)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import text
from valkey.asyncio import Valkey

from app.asgi import build_alchemy_config
from app.domain.sessions.valkey_keys import events_key, interrupt_key, session_key
from tests.helpers import SESSION_FIELDS, assert_problem
from tests.instances import Instance, make_settings
from tests.servers import TestServers

API = "/api/v1/sessions"


# Fresh keys isolate the tests, so the module shares two default instances instead of starting new ones per test.
@pytest.fixture
def a(shared_instance: Instance) -> Instance:
    return shared_instance


@pytest.fixture
def b(shared_instance_b: Instance) -> Instance:
    return shared_instance_b


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"timestamp without a zone: {value}"
    return parsed


def assert_session_shape(body: dict[str, Any]) -> None:
    assert set(body) == SESSION_FIELDS, set(body) ^ SESSION_FIELDS
    assert UUID(body["id"]).version == 7
    assert body["status"] in {"idle", "running", "completed", "interrupted", "error"}
    assert isinstance(body["tags"], list)
    assert isinstance(body["metadata"], dict)
    assert isinstance(body["total_turns"], int)
    assert isinstance(body["total_cost_usd"], int | float)
    assert set(body["usage"]) == {"input_tokens", "output_tokens"}
    assert isinstance(body["version"], int)
    assert not isinstance(body["version"], bool)
    parse_time(body["created_at"])
    parse_time(body["updated_at"])
    if body["last_run_at"] is not None:
        parse_time(body["last_run_at"])


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await client.post(f"{API}", json=body)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_create_returns_full_session_with_etag(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        resp = await c.post(
            API,
            json={
                "title": "first",
                "model": "claude-sonnet-4-5",
                "permission_mode": "plan",
                "tags": ["alpha", "beta"],
                "metadata": {"customer": "acme", "nested": {"n": 1, "list": [1, 2]}},
            },
        )
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert_session_shape(body)
        assert body["title"] == "first"
        assert body["model"] == "claude-sonnet-4-5"
        assert body["permission_mode"] == "plan"
        assert body["tags"] == ["alpha", "beta"]
        assert body["metadata"] == {"customer": "acme", "nested": {"n": 1, "list": [1, 2]}}
        assert body["status"] == "idle"
        assert body["version"] == 1
        assert body["parent_session_id"] is None
        assert body["total_turns"] == 0
        assert body["total_cost_usd"] == 0
        assert body["usage"] == {"input_tokens": 0, "output_tokens": 0}
        assert body["last_run_at"] is None
        assert body["active_run"] is None
        assert resp.headers["etag"] == '"1"'


async def test_create_with_empty_body_uses_defaults(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        body = await create(c)
        assert_session_shape(body)
        assert body["title"] is None
        assert body["model"] is None
        assert body["permission_mode"] is None
        assert body["tags"] == []
        assert body["metadata"] == {}
        assert body["version"] == 1
        # No body at all (every member is optional) and a JSON `null` mean the same, as for fork.
        for content in (b"", b"null"):
            resp = await c.post("/api/v1/sessions", content=content, headers={"Content-Type": "application/json"})
            assert resp.status_code == 201, (content, resp.text)
            assert resp.json()["title"] is None and resp.json()["tags"] == []
        assert (await c.post("/api/v1/sessions")).status_code == 201


async def test_get_returns_same_session_from_either_instance(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        created = await create(ca, title="shared", tags=["x"], metadata={"k": "v"})
        for client in (ca, cb):
            got = await client.get(f"{API}/{created['id']}")
            assert got.status_code == 200, got.text
            assert got.headers["etag"] == '"1"'
            assert got.json() == created


async def test_created_session_is_what_postgres_stores(a: Instance, api_key: str, valkey: Valkey) -> None:
    """The create answers (and caches) the values it inserted, without reading the row back: a read from
    Postgres must give the same session, every member and timestamp alike."""
    async with a.client(api_key) as c:
        created = await create(
            c,
            title="stored \u00e9\U0001f600",
            model="m1",
            permission_mode="plan",
            tags=["a", "b"],
            metadata={"deep": {"x": [1, 2.5, None, True]}, "s": "\u00fc"},
        )
        await valkey.delete(session_key(created["id"]))
        got = await c.get(f"{API}/{created['id']}")
        assert got.status_code == 200, got.text
        assert got.headers["etag"] == '"1"'
        assert got.json() == created


async def test_get_unknown_session_is_404(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        resp = await c.get(f"{API}/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        body = assert_problem(resp, 404, "SESSION_NOT_FOUND")
        assert "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" in body["detail"]


async def test_list_is_newest_first_with_total_and_pagination(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        ids = [(await create(c, title=f"s{i}"))["id"] for i in range(5)]
        resp = await c.get(API)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert set(page) == {"items", "total", "limit", "offset"}
        assert page["total"] == 5
        assert page["limit"] == 20
        assert page["offset"] == 0
        assert [s["id"] for s in page["items"]] == list(reversed(ids))
        for item in page["items"]:
            assert_session_shape(item)

        first = (await c.get(API, params={"limit": 2})).json()
        second = (await c.get(API, params={"limit": 2, "offset": 2})).json()
        third = (await c.get(API, params={"limit": 2, "offset": 4})).json()
        beyond = (await c.get(API, params={"limit": 2, "offset": 10})).json()
        assert [s["id"] for s in first["items"]] == [ids[4], ids[3]]
        assert [s["id"] for s in second["items"]] == [ids[2], ids[1]]
        assert [s["id"] for s in third["items"]] == [ids[0]]
        assert beyond["items"] == []
        for p in (first, second, third, beyond):
            assert p["total"] == 5
            assert p["limit"] == 2
        assert second["offset"] == 2


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_limit_bounds_are_inclusive(a: Instance, api_key: str, limit: int) -> None:
    async with a.client(api_key) as c:
        for _ in range(2):
            await create(c)
        resp = await c.get(API, params={"limit": limit})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["limit"] == limit
        assert len(page["items"]) == min(limit, 2)
        assert page["total"] == 2


async def test_list_filters_by_tag_and_status(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        red = await create(c, tags=["red", "shared"])
        blue = await create(c, tags=["blue", "shared"])
        await create(c)

        by_red = (await c.get(API, params={"tag": "red"})).json()
        assert [s["id"] for s in by_red["items"]] == [red["id"]]
        assert by_red["total"] == 1

        by_shared = (await c.get(API, params={"tag": "shared"})).json()
        assert [s["id"] for s in by_shared["items"]] == [blue["id"], red["id"]]
        assert by_shared["total"] == 2

        none = (await c.get(API, params={"tag": "missing"})).json()
        assert none == {"items": [], "total": 0, "limit": 20, "offset": 0}

        idle = (await c.get(API, params={"status": "idle"})).json()
        assert idle["total"] == 3
        assert {s["status"] for s in idle["items"]} == {"idle"}

        running = (await c.get(API, params={"status": "running"})).json()
        assert running["total"] == 0
        assert running["items"] == []

        both = (await c.get(API, params={"status": "idle", "tag": "blue"})).json()
        assert [s["id"] for s in both["items"]] == [blue["id"]]

        # Repeated parameters: any of the statuses, all of the tags.
        any_status = (await c.get(API, params=[("status", "running"), ("status", "idle")])).json()
        assert any_status["total"] == 3
        all_tags = (await c.get(API, params=[("tag", "shared"), ("tag", "red")])).json()
        assert [s["id"] for s in all_tags["items"]] == [red["id"]]
        assert (await c.get(API, params=[("tag", "red"), ("tag", "blue")])).json()["total"] == 0
        bad = await c.get(API, params=[("status", "idle"), ("status", "sleeping")])
        assert bad.status_code == 400 and bad.json()["code"] == "VALIDATION_ERROR"


async def test_list_only_shows_own_sessions(a: Instance, api_key: str, other_api_key: str) -> None:
    async with a.client(api_key) as mine, a.client(other_api_key) as theirs:
        own = await create(mine, title="mine")
        await create(theirs, title="theirs")
        page = (await mine.get(API)).json()
        assert [s["id"] for s in page["items"]] == [own["id"]]
        assert page["total"] == 1


async def test_patch_changes_fields_and_bumps_version(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        created = await create(ca, title="before", tags=["t1"], metadata={"a": 1}, model="m1")
        sid = created["id"]
        resp = await cb.patch(f"{API}/{sid}", json={"title": "after", "tags": ["t2", "t3"]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert_session_shape(body)
        assert body["title"] == "after"
        assert body["tags"] == ["t2", "t3"]
        assert body["metadata"] == {"a": 1}
        assert body["model"] == "m1"
        assert body["version"] == 2
        assert resp.headers["etag"] == '"2"'
        assert body["created_at"] == created["created_at"]
        assert parse_time(body["updated_at"]) >= parse_time(created["updated_at"])

        resp = await ca.patch(f"{API}/{sid}", json={"metadata": {"b": 2}, "permission_mode": "acceptEdits"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["metadata"] == {"b": 2}
        assert resp.json()["permission_mode"] == "acceptEdits"
        assert resp.json()["version"] == 3

        resp = await ca.patch(f"{API}/{sid}", json={"title": None, "model": None})
        assert resp.status_code == 200, resp.text
        assert resp.json()["title"] is None
        assert resp.json()["model"] is None
        assert resp.json()["version"] == 4

        for client in (ca, cb):
            got = await client.get(f"{API}/{sid}")
            assert got.headers["etag"] == '"4"'
            assert got.json() == resp.json()


async def test_patch_if_match(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        sid = (await create(c, title="v1"))["id"]
        ok = await c.patch(f"{API}/{sid}", json={"title": "v2"}, headers={"If-Match": '"1"'})
        assert ok.status_code == 200, ok.text
        assert ok.json()["version"] == 2

        stale = await c.patch(f"{API}/{sid}", json={"title": "lost"}, headers={"If-Match": '"1"'})
        body = assert_problem(stale, 412, "VERSION_CONFLICT")
        assert "1" in body["detail"]
        got = (await c.get(f"{API}/{sid}")).json()
        assert got["title"] == "v2"
        assert got["version"] == 2

        weak = await c.patch(f"{API}/{sid}", json={"title": "v3"}, headers={"If-Match": 'W/"2"'})
        assert weak.status_code == 200, weak.text
        assert weak.json()["version"] == 3

        star = await c.patch(f"{API}/{sid}", json={"title": "v4"}, headers={"If-Match": "*"})
        assert star.status_code == 200, star.text
        assert star.json()["version"] == 4

        # The ETag a client received is what it sends back.
        current = await c.get(f"{API}/{sid}")
        echoed = await c.patch(f"{API}/{sid}", json={"title": "v5"}, headers={"If-Match": current.headers["etag"]})
        assert echoed.status_code == 200, echoed.text
        assert echoed.json()["version"] == 5

        future = await c.patch(f"{API}/{sid}", json={"title": "x"}, headers={"If-Match": '"99"'})
        assert_problem(future, 412, "VERSION_CONFLICT")


async def test_patch_unknown_session_is_404(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        resp = await c.patch(f"{API}/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", json={"title": "x"})
        assert_problem(resp, 404, "SESSION_NOT_FOUND")


async def test_delete_removes_the_session(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await create(ca, title="doomed"))["id"]
        assert (await cb.get(f"{API}/{sid}")).status_code == 200
        resp = await cb.delete(f"{API}/{sid}")
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        for client in (ca, cb):
            assert_problem(await client.get(f"{API}/{sid}"), 404, "SESSION_NOT_FOUND")
            assert_problem(await client.patch(f"{API}/{sid}", json={"title": "x"}), 404, "SESSION_NOT_FOUND")
            assert_problem(await client.get(f"{API}/{sid}/messages"), 404, "SESSION_NOT_FOUND")
            assert_problem(await client.post(f"{API}/{sid}/fork", json={}), 404, "SESSION_NOT_FOUND")
        assert_problem(await ca.delete(f"{API}/{sid}"), 404, "SESSION_NOT_FOUND")
        assert (await ca.get(API)).json()["total"] == 0


async def test_fork_copies_settings_and_links_parent(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        parent = await create(
            ca, title="parent", model="m1", permission_mode="plan", tags=["t"], metadata={"deep": {"x": [1]}}
        )
        resp = await cb.post(f"{API}/{parent['id']}/fork", json={"title": "child"})
        assert resp.status_code == 201, resp.text
        child = resp.json()
        assert_session_shape(child)
        assert child["id"] != parent["id"]
        assert child["parent_session_id"] == parent["id"]
        assert child["title"] == "child"
        assert child["model"] == "m1"
        assert child["permission_mode"] == "plan"
        assert child["tags"] == ["t"]
        assert child["metadata"] == {"deep": {"x": [1]}}
        assert child["version"] == 1
        assert child["status"] == "idle"
        assert resp.headers["etag"] == '"1"'

        untitled = await ca.post(f"{API}/{parent['id']}/fork", json={})
        assert untitled.status_code == 201, untitled.text
        assert untitled.json()["title"] == "parent"

        no_body = await ca.post(f"{API}/{parent['id']}/fork")
        assert no_body.status_code == 201, no_body.text
        assert no_body.json()["parent_session_id"] == parent["id"]

        got = await ca.get(f"{API}/{child['id']}")
        assert got.json() == child
        # The parent is untouched.
        assert (await ca.get(f"{API}/{parent['id']}")).json() == parent
        page = (await ca.get(API)).json()
        assert page["total"] == 4
        assert page["items"][0]["id"] == no_body.json()["id"]


async def test_messages_of_a_new_session_is_an_empty_page(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        sid = (await create(c))["id"]
        resp = await c.get(f"{API}/{sid}/messages")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"items": [], "total": 0, "limit": 100, "offset": 0}
        paged = await c.get(f"{API}/{sid}/messages", params={"limit": 5, "offset": 3})
        assert paged.json() == {"items": [], "total": 0, "limit": 5, "offset": 3}
        assert_problem(await c.get(f"{API}/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/messages"), 404, "SESSION_NOT_FOUND")


async def test_patch_without_changes_keeps_version(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as c:
        sid = (await create(c, title="same"))["id"]
        resp = await c.patch(f"{API}/{sid}", json={})
        assert resp.status_code == 200, resp.text
        assert resp.json()["version"] == 1
        same = await c.patch(f"{API}/{sid}", json={"title": "same"})
        assert same.status_code == 200, same.text
        assert same.json()["version"] == 1
        assert same.headers["etag"] == '"1"'


async def test_concurrent_creates_all_listed(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        created = await asyncio.gather(*(create(ca if i % 2 else cb, title=f"c{i}") for i in range(20)))
        page = (await ca.get(API, params={"limit": 100})).json()
        assert page["total"] == 20
        assert {s["id"] for s in page["items"]} == {s["id"] for s in created}
        stamps = [parse_time(s["created_at"]) for s in page["items"]]
        assert stamps == sorted(stamps, reverse=True)


async def sql(servers: TestServers, statement: str, **params: Any) -> list[Any]:
    config = build_alchemy_config(make_settings(servers, "sql"))
    try:
        async with config.get_engine().begin() as conn:
            result = await conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await config.get_engine().dispose()


async def test_messages_fork_and_delete_carry_the_transcript(
    servers: TestServers, a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await create(ca, title="with history"))["id"]
        run_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        # Stream ids order numerically, not as text: 9-5 < 10-2 < 10-10.
        for ms, seq, event in ((10, 10, "result"), (9, 5, "init"), (10, 2, "message"), (11, 0, "done")):
            await sql(
                servers,
                "INSERT INTO session_event (session_id, run_id, stream_ms, stream_seq, event, data, created_at,"
                " updated_at) VALUES (:sid, :run, :ms, :seq, :event, CAST(:data AS jsonb), now(), now())",
                sid=sid,
                run=run_id,
                ms=ms,
                seq=seq,
                event=event,
                data=f'{{"n": "{ms}-{seq}"}}',
            )
        for n in range(3):
            await sql(
                servers,
                "INSERT INTO transcript_entry (session_id, subpath, entry, created_at, updated_at)"
                " VALUES (:sid, '', CAST(:entry AS jsonb), now(), now())",
                sid=sid,
                entry=f'{{"n": {n}}}',
            )
        await valkey.xadd(events_key(sid), {"event": "done", "data": "{}"})
        await valkey.set(interrupt_key(sid), "1", ex=60)

        page = (await cb.get(f"{API}/{sid}/messages")).json()
        assert page["total"] == 4
        assert [m["id"] for m in page["items"]] == ["9-5", "10-2", "10-10", "11-0"]
        assert [m["event"] for m in page["items"]] == ["init", "message", "result", "done"]
        first = page["items"][0]
        assert set(first) == {"id", "run_id", "event", "data", "created_at"}
        assert first["run_id"] == run_id
        assert first["data"] == {"n": "9-5"}
        parse_time(first["created_at"])
        second_page = (await ca.get(f"{API}/{sid}/messages", params={"limit": 2, "offset": 2})).json()
        assert [m["id"] for m in second_page["items"]] == ["10-10", "11-0"]
        assert second_page["total"] == 4

        child = (await ca.post(f"{API}/{sid}/fork", json={"title": "child"})).json()
        child_page = (await cb.get(f"{API}/{child['id']}/messages")).json()
        assert [(m["id"], m["event"], m["data"]) for m in child_page["items"]] == [
            (m["id"], m["event"], m["data"]) for m in page["items"]
        ]
        child_transcript = await sql(
            servers, "SELECT entry FROM transcript_entry WHERE session_id = :sid ORDER BY id", sid=child["id"]
        )
        assert [r[0] for r in child_transcript] == [{"n": 0}, {"n": 1}, {"n": 2}]

        assert (await cb.delete(f"{API}/{sid}")).status_code == 204
        for table in ("session_event", "transcript_entry"):
            rows = await sql(servers, f"SELECT count(*) FROM {table} WHERE session_id = :sid", sid=sid)
            assert rows[0][0] == 0, table
        assert not await valkey.exists(events_key(sid))
        assert not await valkey.exists(interrupt_key(sid))
        # The fork keeps its own copy.
        assert (await ca.get(f"{API}/{child['id']}/messages")).json()["total"] == 4
