"""Idempotency-Key (SPEC §8) on the creating POSTs, across two instances, durable in Postgres."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
from valkey.asyncio import Valkey

from tests.helpers import assert_problem, collect_sse, wait_for
from tests.instances import Instance


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"k-{secrets.token_hex(8)}"}


async def test_twenty_concurrent_identical_requests_create_one_run(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        headers = key()
        body = {"prompt": "sleep 0.5", "if_busy": "enqueue"}

        async def post(i: int) -> httpx.Response:
            return await (ca if i % 2 else cb).post(f"/api/v1/sessions/{sid}/runs", json=body, headers=headers)

        responses = await asyncio.gather(*(post(i) for i in range(20)))
        accepted = [r for r in responses if r.status_code == 202]
        in_progress = [r for r in responses if r.status_code == 409]
        assert len(accepted) + len(in_progress) == 20, [r.status_code for r in responses]
        for r in in_progress:
            assert_problem(r, 409, "IDEMPOTENCY_IN_PROGRESS")
            assert r.headers["retry-after"]
        assert {r.json()["id"] for r in accepted} and len({r.json()["id"] for r in accepted}) == 1
        runs = (await ca.get(f"/api/v1/sessions/{sid}/runs")).json()
        assert runs["total"] == 1
        # A later repeat replays the original outcome, from either instance.
        again = await cb.post(f"/api/v1/sessions/{sid}/runs", json=body, headers=headers)
        assert again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == accepted[0].json()
        assert again.headers["location"] == accepted[0].headers["location"]


async def test_session_create_replays_and_survives_a_valkey_flush(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        headers = key()
        first = await ca.post("/api/v1/sessions", json={"title": "once"}, headers=headers)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        await valkey.flushall()
        again = await cb.post("/api/v1/sessions", json={"title": "once"}, headers=headers)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert again.headers["etag"] == first.headers["etag"]
        listed = (await ca.get("/api/v1/sessions")).json()
        assert listed["total"] == 1
        # The same key for another request is refused, and nothing is created.
        reused = await cb.post("/api/v1/sessions", json={"title": "twice"}, headers=headers)
        assert_problem(reused, 422, "IDEMPOTENCY_KEY_REUSED")
        assert (await ca.get("/api/v1/sessions")).json()["total"] == 1


async def test_keys_are_per_api_key_and_errors_are_not_remembered(
    a: Instance, api_key: str, other_api_key: str
) -> None:
    async with a.client(api_key) as ca, a.client(other_api_key) as co:
        headers = key()
        mine = await ca.post("/api/v1/sessions", json={}, headers=headers)
        theirs = await co.post("/api/v1/sessions", json={}, headers=headers)
        assert mine.status_code == theirs.status_code == 201
        assert mine.json()["id"] != theirs.json()["id"]
        assert "idempotent-replayed" not in theirs.headers
        # A 4xx is not remembered: the same key works once the request is right.
        bad = key()
        missing = "01a20000-0000-7000-8000-000000000000"
        assert_problem(
            await ca.post(f"/api/v1/sessions/{missing}/fork", json={}, headers=bad), 404, "SESSION_NOT_FOUND"
        )
        sid = mine.json()["id"]
        busy_key = key()
        await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "sleep 5"})
        busy = await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "x"}, headers=busy_key)
        assert_problem(busy, 409, "SESSION_BUSY")
        await ca.post(f"/api/v1/sessions/{sid}/interrupt")
        queued = await ca.post(
            f"/api/v1/sessions/{sid}/runs", json={"prompt": "x", "if_busy": "enqueue"}, headers=key()
        )
        assert queued.status_code == 202


async def test_stream_replay_rejoins_the_original_run(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        headers = key()
        body: dict[str, Any] = {"prompt": "sleep 1"}
        async with ca.stream("POST", "/api/v1/query", json=body, headers=headers) as first:
            assert first.status_code == 200
            run_id = first.headers["x-run-id"]
            # While the first stream is live, a retry on the other instance follows the same run from its start.
            async with cb.stream("POST", "/api/v1/query", json=body, headers=headers) as replay:
                assert replay.status_code == 200
                assert replay.headers["idempotent-replayed"] == "true"
                assert replay.headers["x-run-id"] == run_id
                replayed = await collect_sse(replay)
            original = await collect_sse(first)
        assert [e.id for e in replayed] == [e.id for e in original]
        assert replayed[0].event == "init" and replayed[0].data["run_id"] == run_id
        sid = replayed[0].data["session_id"]
        assert (await ca.get(f"/api/v1/sessions/{sid}/runs")).json()["total"] == 1


async def test_query_single_replays_its_result(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        headers = key()
        first = await ca.post("/api/v1/query/single", json={"prompt": "once only"}, headers=headers)
        assert first.status_code == 200
        again = await cb.post("/api/v1/query/single", json={"prompt": "once only"}, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()


async def test_malformed_keys_are_400(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        for bad in ("", "x" * 256, "tab\there", "é"):
            resp = await ca.post("/api/v1/sessions", json={}, headers={"Idempotency-Key": bad.encode("utf-8")})  # type: ignore[dict-item]
            assert_problem(resp, 400, "VALIDATION_ERROR")
        assert (await ca.get("/api/v1/sessions")).json()["total"] == 0


async def test_query_single_repeat_while_its_run_goes_on_waits_for_the_same_result(
    a: Instance, b: Instance, api_key: str
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        headers = key()
        body = {"prompt": "sleep 2", "session_id": sid}
        first = asyncio.create_task(ca.post("/api/v1/query/single", json=body, headers=headers))

        async def running() -> bool:
            return (await cb.get(f"/api/v1/sessions/{sid}")).json()["active_run"] is not None

        await wait_for(running, timeout=10, what="the first run started")
        repeat = await cb.post("/api/v1/query/single", json=body, headers=headers)
        original = await first
        assert repeat.status_code == original.status_code == 200, repeat.text
        assert repeat.headers["idempotent-replayed"] == "true"
        assert repeat.json() == original.json()
        assert (await ca.get(f"/api/v1/sessions/{sid}/runs")).json()["total"] == 1
