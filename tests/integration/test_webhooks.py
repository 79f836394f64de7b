"""Webhooks (SPEC §9) against real Postgres and Valkey, app instances over HTTP and a real receiver on loopback.

Deliveries are verified with the independent `standardwebhooks` package. Payload assertions stick to
`data.id`, `data.session_id` and `data.status`: the Run fields that exist before and after runs become
resources."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from typing import Any
from uuid import UUID

import httpx
import pytest

from app.asgi import build_alchemy_config
from app.domain.keys.hashing import hash_key
from app.domain.keys.services import ApiKeyService
from app.domain.webhooks.outbox import enqueue_run_event
from tests.helpers import assert_problem, collect_sse, iter_sse, wait_for
from tests.instances import Instance, InstanceFactory, create_api_key, make_settings
from tests.servers import TestServers
from tests.webhook_receiver import Receiver, always, receiver

WH = "/api/v1/webhook-endpoints"
ALL_TYPES = ["run.completed", "run.failed", "run.interrupted", "run.cancelled", "run.waiting"]
# Loopback receivers need the allow flag; small delays keep retries quick.
FAST = {
    "webhooks__allow_private_networks": True,
    "webhooks__retry_initial_delay": 0.3,
    "webhooks__poll_interval": 0.2,
    "webhooks__timeout": 3.0,
}


@pytest.fixture
async def hooked(instance_factory: InstanceFactory) -> Instance:
    inst: Instance = await instance_factory("hooked", **FAST)
    return inst


async def register(client: httpx.AsyncClient, url: str, events: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = events
    resp = await client.post(WH, json=body)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def run_to_done(client: httpx.AsyncClient, prompt: str, sid: str | None = None) -> tuple[str, str, list[Any]]:
    """Runs `prompt` and returns (session_id, run_id, events)."""
    body: dict[str, Any] = {"prompt": prompt}
    if sid:
        body["session_id"] = sid
    async with client.stream("POST", "/api/v1/query", json=body) as resp:
        assert resp.status_code == 200
        events = await collect_sse(resp, timeout=30)
    init = events[0].data
    return init["session_id"], init["run_id"], events


async def key_id_of(servers: TestServers, key: str) -> UUID:
    config = build_alchemy_config(make_settings(servers, "keys"))
    try:
        async with config.get_session() as db:
            row = await ApiKeyService(session=db).find_active_by_hash(hash_key(key))
    finally:
        await config.get_engine().dispose()
    assert row is not None
    return row.id


async def enqueue_directly(servers: TestServers, key: str, event_type: str, runs: list[dict[str, Any]]) -> None:
    """Events through the seam the runs code uses, committed in one transaction."""
    owner = await key_id_of(servers, key)
    config = build_alchemy_config(make_settings(servers, "seam"))
    try:
        async with config.get_session() as db:
            for run in runs:
                await enqueue_run_event(db, owner_key_id=owner, event_type=event_type, run=run)
            await db.commit()
    finally:
        await config.get_engine().dispose()


async def deliveries(client: httpx.AsyncClient, endpoint_id: str, **params: Any) -> dict[str, Any]:
    resp = await client.get(f"{WH}/{endpoint_id}/deliveries", params=params)
    assert resp.status_code == 200, resp.text
    page: dict[str, Any] = resp.json()
    return page


def now(check: Any) -> Any:
    """A probe for `wait_for` from a plain function."""

    async def probe() -> Any:
        return check()

    return probe


def verified(rec: Receiver, secret: str, path: str = "/hook") -> list[dict[str, Any]]:
    return [r.verify(secret) for r in rec.requests(path)]


# -- the routes ----------------------------------------------------------------------------------------


async def test_endpoints_are_per_key_and_the_secret_is_shown_once(
    hooked: Instance, api_key: str, other_api_key: str
) -> None:
    async with hooked.client(api_key) as c, hooked.client(other_api_key) as other:
        created = await register(c, "http://127.0.0.1:9/a", ["run.failed", "run.completed", "run.failed"])
        assert set(created) == {"id", "url", "events", "secret", "created_at"}
        assert created["secret"].startswith("whsec_")
        assert created["events"] == ["run.completed", "run.failed"]
        everything = await register(c, "http://127.0.0.1:9/b")
        assert everything["events"] == ALL_TYPES
        assert everything["secret"] != created["secret"]

        listed = (await c.get(WH)).json()
        assert listed["total"] == 2
        assert [e["id"] for e in listed["items"]] == [everything["id"], created["id"]]  # newest first
        assert all("secret" not in e for e in listed["items"])
        got = (await c.get(f"{WH}/{created['id']}")).json()
        assert got == {k: v for k, v in created.items() if k != "secret"}

        # Another key sees none of it.
        assert (await other.get(WH)).json()["total"] == 0
        for method, path in [
            ("GET", f"{WH}/{created['id']}"),
            ("GET", f"{WH}/{created['id']}/deliveries"),
            ("DELETE", f"{WH}/{created['id']}"),
        ]:
            assert_problem(await other.request(method, path), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")

        assert (await c.delete(f"{WH}/{created['id']}")).status_code == 204
        assert_problem(await c.get(f"{WH}/{created['id']}"), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
        assert_problem(await c.delete(f"{WH}/{created['id']}"), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
        assert_problem(await c.get(f"{WH}/not-a-uuid"), 400, "VALIDATION_ERROR")
        assert (await c.get(WH)).json()["total"] == 1


async def test_bad_input_is_a_4xx_and_stores_nothing(instance_factory: InstanceFactory, api_key: str) -> None:
    # The allow flag off (the default): the SSRF guard applies. (Not a module-wide instance: it would also
    # deliver, and refuse, the loopback deliveries of the other tests.)
    guarded = await instance_factory("guarded")
    async with guarded.client(api_key) as c:
        cases: list[tuple[Any, int, str]] = [
            ({"url": "http://93.184.215.14/x", "events": ["run.exploded"]}, 400, "VALIDATION_ERROR"),
            ({"url": "http://93.184.215.14/x", "events": []}, 400, "VALIDATION_ERROR"),
            ({"url": "http://93.184.215.14/x", "extra": 1}, 400, "VALIDATION_ERROR"),
            ({"events": ["run.failed"]}, 400, "VALIDATION_ERROR"),
            ({"url": "not a url"}, 400, "VALIDATION_ERROR"),
            ({"url": "http://"}, 400, "VALIDATION_ERROR"),
            ({"url": "x" * 3000}, 400, "VALIDATION_ERROR"),
            ({"url": 5}, 400, "VALIDATION_ERROR"),
            ({"url": "ftp://example.com/hook"}, 422, "WEBHOOK_URL_REFUSED"),
            ({"url": "http://127.0.0.1:8000/hook"}, 422, "WEBHOOK_URL_REFUSED"),
            ({"url": "http://10.1.2.3/hook"}, 422, "WEBHOOK_URL_REFUSED"),
            ({"url": "http://169.254.169.254/latest/meta-data/"}, 422, "WEBHOOK_URL_REFUSED"),
            ({"url": "http://localhost:8000/hook"}, 422, "WEBHOOK_URL_REFUSED"),
            ({"url": "http://[::1]:8000/hook"}, 422, "WEBHOOK_URL_REFUSED"),
            ({"url": "http://does-not-exist.invalid/hook"}, 422, "WEBHOOK_URL_REFUSED"),
        ]
        for body, status, code in cases:
            assert_problem(await c.post(WH, json=body), status, code)
        assert_problem(
            await c.post(WH, content=b"{", headers={"content-type": "application/json"}), 400, "VALIDATION_ERROR"
        )
        assert_problem(await c.get(WH, params={"limit": 0}), 400, "VALIDATION_ERROR")
        assert (await c.get(WH)).json()["total"] == 0


async def test_at_most_ten_endpoints_per_key_even_when_created_at_once(
    hooked: Instance, api_key: str, other_api_key: str
) -> None:
    async with hooked.client(api_key) as c, hooked.client(other_api_key) as other:
        results = await asyncio.gather(*(c.post(WH, json={"url": f"http://127.0.0.1:9/{n}"}) for n in range(13)))
        assert sorted(r.status_code for r in results) == [201] * 10 + [409] * 3
        for r in results:
            if r.status_code == 409:
                assert_problem(r, 409, "WEBHOOK_ENDPOINT_LIMIT")
        assert (await c.get(WH)).json()["total"] == 10
        # Per key: another key still has its ten.
        assert (await other.post(WH, json={"url": "http://127.0.0.1:9/x"})).status_code == 201


# -- deliveries ----------------------------------------------------------------------------------------


async def test_every_event_type_is_delivered_signed(servers: TestServers, hooked: Instance, api_key: str) -> None:
    with receiver() as rec:
        async with hooked.client(api_key) as c:
            endpoint = await register(c, rec.url("/all"))
            failures_only = await register(c, rec.url("/failed"), ["run.failed"])
            secret = endpoint["secret"]

            def events_at(path: str, secret: str = secret) -> list[dict[str, Any]]:
                return verified(rec, secret, path)

            async def arrived(run_id: str, event_type: str) -> dict[str, Any] | None:
                for body in events_at("/all"):
                    if body["data"]["id"] == run_id and body["type"] == event_type:
                        return body
                return None

            sid, completed_run, _ = await run_to_done(c, "hello there")
            body = await wait_for(lambda: arrived(completed_run, "run.completed"), timeout=15, what="run.completed")
            assert body["data"]["session_id"] == sid
            assert body["data"]["status"] == "completed"
            assert body["id"].startswith("evt_")
            assert body["created_at"]

            _, failed_run, events = await run_to_done(c, "fail boom", sid)
            assert events[-1].data == {"reason": "error"}
            body = await wait_for(lambda: arrived(failed_run, "run.failed"), timeout=15, what="run.failed")
            assert body["data"]["status"] == "error"
            assert body["data"]["session_id"] == sid

            # Interrupted.
            async with c.stream("POST", "/api/v1/query", json={"prompt": "sleep 30", "session_id": sid}) as resp:
                seen = []
                async for ev in iter_sse(resp):
                    if ev.comment:
                        continue
                    seen.append(ev)
                    if ev.event == "message" and ev.data.get("role") != "user":
                        assert (await c.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
                    if ev.event == "done":
                        break
            interrupted_run = seen[0].data["run_id"]
            body = await wait_for(lambda: arrived(interrupted_run, "run.interrupted"), timeout=15, what="interrupted")
            assert body["data"]["status"] == "interrupted"

            # Waiting: the notice arrives while the run waits; answering it completes the run.
            async with c.stream("POST", "/api/v1/query", json={"prompt": "ask ready?", "session_id": sid}) as resp:
                waiting_run, last = "", None
                async for ev in iter_sse(resp):
                    if ev.event == "init":
                        waiting_run = ev.data["run_id"]
                    if ev.event == "question":
                        waiting = functools.partial(arrived, waiting_run, "run.waiting")
                        body = await wait_for(waiting, timeout=15, what="run.waiting")
                        assert body["data"]["status"] == "running"
                        assert body["data"]["session_id"] == sid
                        answered = await c.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "yes"})
                        assert answered.status_code == 200
                    if ev.event == "done":
                        last = ev.data
                        break
                assert last == {"reason": "completed"}
            await wait_for(lambda: arrived(waiting_run, "run.completed"), timeout=15, what="completed after answer")

            # Cancelled: a queued run cancelled before it starts; `data` is the whole Run.
            blocker = (await c.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "sleep 30"})).json()
            queued = (
                await c.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "never", "if_busy": "enqueue"})
            ).json()
            assert (await c.post(f"/api/v1/runs/{queued['id']}/cancel")).json()["status"] == "cancelled"
            body = await wait_for(lambda: arrived(queued["id"], "run.cancelled"), timeout=15, what="run.cancelled")
            assert body["data"] == (await c.get(f"/api/v1/runs/{queued['id']}")).json()
            await c.post(f"/api/v1/runs/{blocker['id']}/cancel")
            await wait_for(lambda: arrived(blocker["id"], "run.interrupted"), timeout=15, what="blocker interrupted")

            # The filtered endpoint got only the failure, signed with its own secret.
            await wait_for(now(lambda: rec.requests("/failed")), timeout=10, what="/failed delivery")
            only = events_at("/failed", failures_only["secret"])
            assert [(b["type"], b["data"]["id"]) for b in only] == [("run.failed", failed_run)]

            # Each event once (all 2xx), and the deliveries route agrees.
            assert len({r.webhook_id for r in rec.requests("/all")}) == len(rec.requests("/all")) == 7
            page = await deliveries(c, endpoint["id"])
            assert page["total"] == 7
            assert {d["status"] for d in page["items"]} == {"delivered"}
            assert [d["type"] for d in page["items"]][::-1] == [
                "run.completed",
                "run.failed",
                "run.interrupted",
                "run.waiting",
                "run.completed",
                "run.cancelled",
                "run.interrupted",
            ]
            assert all(d["attempts"] == 1 and d["response_status"] == 200 for d in page["items"])
            assert all(d["next_attempt_at"] is None for d in page["items"])
            by_id = {r.webhook_id: r for r in rec.requests("/all")}
            assert {d["event_id"] for d in page["items"]} == set(by_id)
            assert all(json.loads(by_id[d["event_id"]].body)["id"] == d["event_id"] for d in page["items"])
            paged = await deliveries(c, endpoint["id"], limit=2, offset=1)
            assert [d["id"] for d in paged["items"]] == [d["id"] for d in page["items"][1:3]]

            metrics = (await c.get("/metrics")).text
            assert 'agentapi_webhook_attempts_total{outcome="success"}' in metrics
            assert 'agentapi_webhook_deliveries_total{status="delivered"}' in metrics


async def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers_2xx(hooked: Instance, api_key: str) -> None:
    with receiver(lambda _req, n: 500 if n < 3 else 200) as rec:
        async with hooked.client(api_key) as c:
            endpoint = await register(c, rec.url())
            sid, run_id, _ = await run_to_done(c, "retry me")

            async def delivered() -> dict[str, Any] | None:
                items = (await deliveries(c, endpoint["id"]))["items"]
                return items[0] if items and items[0]["status"] == "delivered" else None

            final = await wait_for(delivered, timeout=30, what="delivered after retries")
            attempts = rec.requests()
            assert [r.status for r in attempts] == [500, 500, 500, 200]
            assert len({r.webhook_id for r in attempts}) == 1
            assert {r.body for r in attempts} == {attempts[0].body}  # the same body every time
            bodies = [r.verify(endpoint["secret"]) for r in attempts]  # each attempt signed afresh
            assert bodies[0]["id"] == attempts[0].webhook_id == final["event_id"]
            assert bodies[0]["data"]["id"] == run_id
            assert bodies[0]["data"]["session_id"] == sid
            assert final["attempts"] == 4
            assert final["response_status"] == 200
            # Backoff: each wait at least 0.8x the (doubling) delay 0.3 s, 0.6 s, 1.2 s.
            gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
            for gap, base in zip(gaps, [0.3, 0.6, 1.2], strict=True):
                assert gap >= 0.8 * base - 0.05, gaps
            print(f"retry gaps (s): {[round(g, 3) for g in gaps]}")


async def test_retries_end_failed_after_the_horizon(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory("horizon", **{**FAST, "webhooks__retry_horizon": 1.5})
    with receiver(always(503)) as rec:
        async with inst.client(api_key) as c:
            endpoint = await register(c, rec.url())
            await run_to_done(c, "nobody listens")

            async def failed() -> dict[str, Any] | None:
                items = (await deliveries(c, endpoint["id"]))["items"]
                return items[0] if items and items[0]["status"] == "failed" else None

            final = await wait_for(failed, timeout=20, what="failed")
            assert final["response_status"] == 503
            assert final["next_attempt_at"] is None
            assert final["attempts"] == len(rec.requests()) >= 2
            assert 'agentapi_webhook_deliveries_total{status="failed"}' in (await c.get("/metrics")).text


async def test_redirects_timeouts_and_errors_are_failed_attempts(
    instance_factory: InstanceFactory, api_key: str
) -> None:
    inst = await instance_factory("slow", **{**FAST, "webhooks__timeout": 1.0})

    def respond(req: Any, n: int) -> int:
        if req.path == "/slow" and n == 0:
            time.sleep(2.5)  # beyond WEBHOOK_TIMEOUT
        return 302 if req.path == "/redirect" and n == 0 else 200

    with receiver(respond) as rec:
        async with inst.client(api_key) as c:
            redirect = await register(c, rec.url("/redirect"))
            slow = await register(c, rec.url("/slow"))
            await run_to_done(c, "edge cases")

            async def settled(endpoint: dict[str, Any]) -> dict[str, Any] | None:
                items = (await deliveries(c, endpoint["id"]))["items"]
                return items[0] if items and items[0]["status"] == "delivered" else None

            moved = await wait_for(lambda: settled(redirect), timeout=20, what="redirect endpoint retried")
            assert moved["attempts"] == 2  # the 302 was not followed, not delivered
            timed_out = await wait_for(lambda: settled(slow), timeout=20, what="slow endpoint retried")
            assert timed_out["attempts"] == 2
            assert 'agentapi_webhook_attempts_total{outcome="timeout"}' in (await c.get("/metrics")).text


async def test_deleting_an_endpoint_stops_its_retries(hooked: Instance, api_key: str) -> None:
    with receiver(always(500)) as rec:
        async with hooked.client(api_key) as c:
            endpoint = await register(c, rec.url())
            await run_to_done(c, "doomed")
            await wait_for(now(lambda: rec.arrived() >= 2), timeout=15, what="two attempts")
            assert (await c.delete(f"{WH}/{endpoint['id']}")).status_code == 204
            after_delete = rec.arrived()
            # An attempt already in flight may land; none is started after that. Retries were due every
            # 0.3-1.2 s: watch for 3 s.
            await asyncio.sleep(3)
            assert rec.arrived() <= after_delete + 1


async def test_a_slow_endpoint_does_not_delay_another(
    servers: TestServers, instance_factory: InstanceFactory, api_key: str
) -> None:
    inst = await instance_factory(
        "fair", **{**FAST, "webhooks__concurrency": 4, "webhooks__endpoint_concurrency": 2, "webhooks__timeout": 5.0}
    )

    def respond(req: Any, _n: int) -> int:
        if req.path == "/slow":
            time.sleep(3)
        return 200

    with receiver(respond) as rec:
        async with inst.client(api_key) as c:
            slow = await register(c, rec.url("/slow"))
            await register(c, rec.url("/fast"))
            # Ten events at once: the slow endpoint may hold 2 of the 4 slots, never all of them.
            await enqueue_directly(
                servers,
                api_key,
                "run.completed",
                [{"id": f"r{n}", "session_id": "s", "status": "completed"} for n in range(10)],
            )
            started = time.monotonic()
            await wait_for(now(lambda: len(rec.requests("/fast")) == 10), timeout=10, what="fast ones")
            fast_done = time.monotonic() - started
            assert fast_done < 3.0, fast_done  # before even the first slow one was answered
            assert max(rec.max_in_flight[k] for k in rec.max_in_flight if k[0] == "/slow") == 1
            assert rec.arrived("/slow") <= 2 + len(rec.requests("/slow"))
            assert slow["id"]


async def test_two_instances_never_deliver_one_event_at_once(
    servers: TestServers, instance_factory: InstanceFactory
) -> None:
    """Many events, slow and flaky receivers, two delivering instances: every event is
    delivered, no webhook-id is ever in flight twice, and every request the receiver saw is an attempt the
    outbox counted (no duplicate claim)."""
    # A timeout long enough that every attempt reaches the receiver, even on a loaded machine.
    options = {**FAST, "webhooks__retry_initial_delay": 0.1, "webhooks__timeout": 5.0}
    a = await instance_factory("ca", **options)
    await instance_factory("cb", **options)
    key = await create_api_key(servers)

    def respond(req: Any, n: int) -> int:
        return 500 if n == 0 and int(req.headers["webhook-id"][-1], 16) % 3 == 0 else 200

    with receiver(respond, hold=0.05) as rec:
        async with a.client(key) as c:
            endpoints = [await register(c, rec.url(f"/e{n}")) for n in range(3)]
            await enqueue_directly(
                servers,
                key,
                "run.completed",
                [{"id": f"run-{n}", "session_id": "s", "status": "completed"} for n in range(40)],
            )

            async def all_delivered() -> bool:
                for endpoint in endpoints:
                    items = (await deliveries(c, endpoint["id"], limit=100))["items"]
                    if len(items) != 40 or any(d["status"] != "delivered" for d in items):
                        return False
                return True

            await wait_for(all_delivered, timeout=60, interval=0.2, what="all 120 delivered")
            assert max(rec.max_in_flight.values()) == 1, [k for k, v in rec.max_in_flight.items() if v > 1]
            for n, endpoint in enumerate(endpoints):
                items = (await deliveries(c, endpoint["id"], limit=100))["items"]
                seen: dict[str, int] = {}
                for r in rec.requests(f"/e{n}"):
                    seen[r.webhook_id] = seen.get(r.webhook_id, 0) + 1
                assert {d["event_id"]: d["attempts"] for d in items} == seen
            # Every event has one id across its endpoints.
            ids = {r.webhook_id for r in rec.requests()}
            assert len(ids) == 40
