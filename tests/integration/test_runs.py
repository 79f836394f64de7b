"""Runs across two instances on real Postgres and Valkey (SPEC §3, §4, §5)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from app.domain.runs import control
from app.domain.sessions.valkey_keys import CONTROL_ANNOUNCE_CHANNEL, events_key
from tests.helpers import SSEEvent, collect_sse, iter_sse, wait_for
from tests.instances import Instance


def id_key(entry_id: str | None) -> tuple[int, int]:
    assert entry_id is not None
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def new_session(client: httpx.AsyncClient, **body: Any) -> str:
    resp = await client.post("/api/v1/sessions", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def run_to_done(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[SSEEvent]:
    async with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return await collect_sse(resp)


async def start_stream(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[httpx.Response, Any]:
    """Opens an SSE POST and returns the response and its event iterator (caller closes the response)."""
    request = client.build_request("POST", path, json=body)
    resp = await client.send(request, stream=True)
    assert resp.status_code == 200, await resp.aread()
    return resp, iter_sse(resp).__aiter__()


async def next_event(events: Any, name: str | None = None, timeout: float = 10.0) -> SSEEvent:
    async def get() -> SSEEvent:
        while True:
            ev: SSEEvent = await events.__anext__()
            if ev.comment:
                continue
            if name is None or ev.event == name:
                return ev

    return await asyncio.wait_for(get(), timeout)


async def session_status(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/sessions/{sid}")
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


async def test_query_creates_session_and_records_everything(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "tool Bash"})
        names = [e.event for e in events]
        # init, the user's turn, then the agent's side.
        assert names == ["init", "message", "message", "message", "message", "result", "done"]
        init, result, done = events[0].data, events[-2].data, events[-1].data
        sid, run_id = init["session_id"], init["run_id"]
        assert set(init) >= {"session_id", "run_id", "model", "permission_mode", "tools"}
        assert events[1].data["role"] == "user"
        assert events[1].data["content"] == [{"type": "text", "text": "tool Bash"}]
        assert events[2].data["content"][0]["type"] == "tool_use"
        assert events[3].data["content"][0]["type"] == "tool_result"
        assert set(result) >= {
            "session_id",
            "run_id",
            "is_error",
            "num_turns",
            "duration_ms",
            "total_cost_usd",
            "usage",
            "result",
            "structured_output",
            "stop_reason",
        }
        assert result["run_id"] == run_id and result["is_error"] is False
        assert done == {"reason": "completed"}
        assert events.count(events[-1]) == 1

        # Before `done` was sent, the final status was committed and the lease released.
        session = await session_status(cb, sid)
        assert session["status"] == "completed"
        assert session["active_run"] is None
        assert session["total_turns"] == 1
        assert session["last_run_at"] is not None
        assert session["version"] == 3  # created, run start, run end

        messages = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()
        assert [m["event"] for m in messages["items"]] == names
        assert [m["id"] for m in messages["items"]] == [e.id for e in events]
        assert all(m["run_id"] == run_id for m in messages["items"])


async def test_next_run_can_start_as_soon_as_done_is_seen(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        first = await run_to_done(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "one"})
        second = await run_to_done(cb, "/api/v1/query", {"prompt": "two", "session_id": sid})
        assert second[-1].data == {"reason": "completed"}
        # Ids keep increasing across runs of the session.
        assert id_key(second[0].id) > id_key(first[-1].id)
        assert (await session_status(ca, sid))["version"] == 5


async def test_busy_session_gets_409_from_the_other_instance(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 5"})
        try:
            init = await next_event(events, "init")
            busy = await cb.post("/api/v1/query", json={"prompt": "hi", "session_id": sid})
            assert busy.status_code == 409
            assert busy.headers["content-type"].startswith("application/problem+json")
            assert busy.json()["code"] == "SESSION_BUSY"
            busy_delete = await cb.delete(f"/api/v1/sessions/{sid}")
            assert busy_delete.status_code == 409 and busy_delete.json()["code"] == "SESSION_BUSY"
            session = await session_status(cb, sid)
            assert session["status"] == "running"
            assert session["active_run"]["run_id"] == init.data["run_id"]
            assert session["active_run"]["instance_id"] == a.app.state["settings"].app.instance_id
            interrupted = await cb.post(f"/api/v1/sessions/{sid}/interrupt")
            assert interrupted.status_code == 202
            assert interrupted.json() == {"status": "interrupting", "run_id": init.data["run_id"]}
            done = await next_event(events, "done")
            assert done.data == {"reason": "interrupted"}
        finally:
            await resp.aclose()
        assert (await session_status(cb, sid))["status"] == "interrupted"

        async def persisted_to_done() -> list[Any]:
            # `done` reaches Postgres a moment after the stream (the persister batches); seen on a cluster.
            items: list[Any] = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
            return items if items and items[-1]["event"] == "done" else []

        msgs = await wait_for(persisted_to_done, what="done in /messages", timeout=5)
        assert [m["event"] for m in msgs][-2:] == ["result", "done"]
        assert msgs[-2]["data"]["stop_reason"] == "interrupted" and msgs[-2]["data"]["is_error"] is False


async def test_interrupt_from_other_instance_is_fast(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 30"})
        try:
            await next_event(events, "message")  # a tick: the run is under way
            started = time.perf_counter()
            assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
            done = await next_event(events, "done", timeout=5)
            elapsed = time.perf_counter() - started
        finally:
            await resp.aclose()
        assert done.data == {"reason": "interrupted"}
        # Well under a tick-poll or heartbeat period: the control message acted at once.
        assert elapsed < 0.9, elapsed


async def test_interrupt_without_run_is_409_not_running(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        sid = await new_session(ca)
        resp = await ca.post(f"/api/v1/sessions/{sid}/interrupt")
        assert resp.status_code == 409 and resp.json()["code"] == "NOT_RUNNING"
        resp = await ca.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "x"})
        assert resp.status_code == 409 and resp.json()["code"] == "NOT_RUNNING"


async def test_stale_interrupt_marker_does_not_stop_a_later_run(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 5"})
        try:
            await next_event(events, "init")
            assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
            assert (await next_event(events, "done")).data == {"reason": "interrupted"}
        finally:
            await resp.aclose()
        # The marker (TTL 300 s) is still there; a new run must not be stopped by it.
        events2 = await run_to_done(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 1.5"})
        assert events2[-1].data == {"reason": "completed"}
        assert sum(1 for e in events2 if e.event == "message" and e.data["role"] == "assistant") == 15


async def test_answer_from_other_instance_reaches_agent(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        none_pending = None
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "ask Favourite colour?"})
        try:
            question = await next_event(events, "question")
            assert question.data["question"] == "Favourite colour?"
            wrong = await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "x", "question_id": "nope"})
            assert wrong.status_code == 409 and wrong.json()["code"] == "NO_PENDING_QUESTION"
            answered = await cb.post(
                f"/api/v1/sessions/{sid}/answer",
                json={"answer": "green", "question_id": question.data["question_id"]},
            )
            assert answered.status_code == 200 and answered.json() == {"status": "delivered"}
            turn = await next_event(events, "message")
            assert turn.data["role"] == "user" and turn.data["content"][0]["text"] == "green"
            assert turn.data["question_id"] == question.data["question_id"]
            message = await next_event(events, "message")
            assert message.data["content"][0]["text"] == "Answer: green"
            result = await next_event(events, "result")
            assert result.data["result"] == "Answer: green"
            await next_event(events, "done")
            none_pending = await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "again"})
        finally:
            await resp.aclose()
        assert none_pending is not None and none_pending.status_code == 409


async def test_answer_while_running_without_question_is_409(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 3"})
        try:
            await next_event(events, "message")
            resp2 = await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "x"})
            assert resp2.status_code == 409 and resp2.json()["code"] == "NO_PENDING_QUESTION"
            await cb.post(f"/api/v1/sessions/{sid}/interrupt")
            await next_event(events, "done")
        finally:
            await resp.aclose()


async def test_permission_mode_change_reaches_running_agent(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca, permission_mode="default")
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 5"})
        try:
            init = await next_event(events, "init")
            manager = a.components.run_manager
            from uuid import UUID

            run = manager.runs[UUID(init.data["run_id"])]
            assert run.agent.permission_mode == "default"
            patched = await cb.patch(f"/api/v1/sessions/{sid}", json={"permission_mode": "plan"})
            assert patched.status_code == 200
            await wait_for(lambda: _mode(run), what="permission mode to reach the agent", timeout=5)
            await cb.post(f"/api/v1/sessions/{sid}/interrupt")
            await next_event(events, "done")
        finally:
            await resp.aclose()


async def _mode(run: Any) -> bool:
    return bool(run.agent.permission_mode == "plan")


async def test_rejoin_from_other_instance_after_disconnect(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 1.5"})
        seen = [
            await next_event(events, "init"),
            await next_event(events, "message"),
            await next_event(events, "message"),
        ]
        await resp.aclose()  # the client goes away; the run goes on
        async with cb.stream(
            "GET", f"/api/v1/sessions/{sid}/events", headers={"Last-Event-ID": str(seen[-1].id)}
        ) as r2:
            assert r2.status_code == 200
            rest = await collect_sse(r2)
        full = await run_to_done_events(cb, sid)
        assert [e.id for e in seen + rest] == [e.id for e in full]
        assert rest[-1].data == {"reason": "completed"}
        ticks = [
            e.data["content"][0]["text"] for e in seen + rest if e.event == "message" and e.data["role"] == "assistant"
        ]
        assert ticks == [f"tick {n}" for n in range(1, 16)]


async def run_to_done_events(client: httpx.AsyncClient, sid: str, **params: str) -> list[SSEEvent]:
    async with client.stream("GET", f"/api/v1/sessions/{sid}/events", params=params) as resp:
        assert resp.status_code == 200
        return await collect_sse(resp)


async def test_events_replay_after_run_and_after_param(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        never = await cb.get(f"/api/v1/sessions/{sid}/events")
        assert never.status_code == 204
        events = await run_to_done(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "a b c"})
        replay = await run_to_done_events(cb, sid)
        assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in events]
        tail = await run_to_done_events(cb, sid, after=str(events[2].id))
        assert [e.id for e in tail] == [e.id for e in events[3:]]
        bad = await cb.get(f"/api/v1/sessions/{sid}/events", headers={"Last-Event-ID": "nonsense"})
        assert bad.status_code == 400 and bad.json()["code"] == "VALIDATION_ERROR"
        # Ids out of any stream's range are bad input too, not a 200 whose body then breaks.
        for out_of_range in ["99999999999999999999999", "1-18446744073709551616", f"{2**63}-0", f"1-{2**63}"]:
            for how in ({"headers": {"Last-Event-ID": out_of_range}}, {"params": {"after": out_of_range}}):
                resp = await cb.get(f"/api/v1/sessions/{sid}/events", **how)  # type: ignore[arg-type]
                assert resp.status_code == 400 and resp.json()["code"] == "VALIDATION_ERROR", (how, resp.text)


async def test_rejoining_after_done_closes_at_once(a: Instance, b: Instance, api_key: str) -> None:
    """An EventSource reconnects after `done` with the id of `done`: the stream must close at once, not after a
    blocking read (a ping interval) has run out."""
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        events = await run_to_done(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "a b"})
        for client in (ca, cb):
            for how in ({"headers": {"Last-Event-ID": events[-1].id}}, {"params": {"after": "9999999999999-0"}}):
                started = time.monotonic()
                resp = await client.get(f"/api/v1/sessions/{sid}/events", **how)  # type: ignore[arg-type]
                assert resp.status_code == 200 and resp.text.strip() == "", resp.text
                assert time.monotonic() - started < 5.0, how  # the ping interval is 15 s


async def test_events_replay_from_postgres_after_flush(a: Instance, b: Instance, api_key: str, valkey: Any) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        events = await run_to_done(
            ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "one two", "include_partial_messages": True}
        )
        assert any(e.event == "partial" for e in events)
        await valkey.delete(events_key(sid))
        replay = await run_to_done_events(cb, sid)
        durable = [e for e in events if e.event != "partial"]
        assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in durable]


async def test_client_disconnect_does_not_stop_the_run(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 0.5"})
        await next_event(events, "init")
        await resp.aclose()

        async def completed() -> bool:
            return (await session_status(cb, sid))["status"] == "completed"

        await wait_for(completed, timeout=10, what="the run to complete without its client")
        msgs = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
        assert [m["event"] for m in msgs][-2:] == ["result", "done"]
        assert sum(1 for m in msgs if m["event"] == "message" and m["data"]["role"] == "assistant") == 5


async def test_fail_prompt_ends_with_error_then_done(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "fail boom"})
        assert [e.event for e in events] == ["init", "message", "error", "done"]
        assert events[2].data == {"code": "AGENT_ERROR", "message": "boom"}
        assert events[-1].data == {"reason": "error"}
        sid = events[0].data["session_id"]
        assert (await session_status(ca, sid))["status"] == "error"


async def test_query_single_success_and_failure(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        ok = await ca.post("/api/v1/query/single", json={"prompt": "hi there"})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["is_error"] is False and body["result"] == "Echo: hi there"
        assert body["error"] is None
        failed = await ca.post("/api/v1/query/single", json={"prompt": "fail nope"})
        assert failed.status_code == 200
        assert failed.json()["is_error"] is True
        assert failed.json()["error"] == {"code": "AGENT_ERROR", "message": "nope"}


async def test_burst_2000_in_order(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "burst 2000"})
        msgs = [e for e in events if e.event == "message" and e.data["role"] == "assistant"]
        assert [m.data["content"][0]["text"] for m in msgs] == [f"burst {n}" for n in range(1, 2001)]
        keys = [id_key(e.id) for e in events]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        sid = events[0].data["session_id"]
        replay = await run_to_done_events(cb, sid)
        assert [e.id for e in replay] == [e.id for e in events]
        page = (await cb.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1000, "offset": 1000})).json()
        assert page["total"] == len(events)


async def test_query_validation_and_ownership(a: Instance, api_key: str, other_api_key: str) -> None:
    async with a.client(api_key) as ca, a.client(other_api_key) as co:
        sid = await new_session(ca)
        for body in (
            {},
            {"prompt": ""},
            {"prompt": "x" * 100_001},
            {"prompt": "x", "max_turns": 0},
            {"prompt": "x", "permission_mode": "yolo"},
            {"prompt": "x", "bogus": 1},
        ):
            resp = await ca.post("/api/v1/query", json=body)
            assert resp.status_code in (400, 422), (body, resp.status_code)
            assert resp.json()["code"] == "VALIDATION_ERROR"
        limit_ok = await ca.post("/api/v1/query/single", json={"prompt": "x" * 100_000})
        assert limit_ok.status_code == 200
        for path in (f"/api/v1/sessions/{sid}/resume", "/api/v1/query"):
            body = {"prompt": "hi"} if "resume" in path else {"prompt": "hi", "session_id": sid}
            resp = await co.post(path, json=body)
            assert resp.status_code == 404 and resp.json()["code"] == "SESSION_NOT_FOUND"
        for path in ("events", "interrupt", "answer"):
            method = "GET" if path == "events" else "POST"
            resp = await co.request(
                method, f"/api/v1/sessions/{sid}/{path}", json={"answer": "x"} if path == "answer" else None
            )
            assert resp.status_code == 404, path


async def test_openapi_describes_each_sse_event(a: Instance, api_key: str) -> None:
    """Found by the fuzzer: the stream was documented as one string, so every event violated the schema."""
    async with a.client() as anon:
        doc = (await anon.get("/docs/openapi.json")).json()
    for path, method in (
        ("/api/v1/query", "post"),
        ("/api/v1/sessions/{session_id}/resume", "post"),
        ("/api/v1/sessions/{session_id}/events", "get"),
    ):
        schema = doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        ref = schema["$ref"].rsplit("/", 1)[-1]
        event = doc["components"]["schemas"][ref]
        assert sorted(event["required"]) == ["data", "event", "id"], path
        assert "done" in event["properties"]["event"]["enum"]
    async with a.client(api_key) as client:
        events = await run_to_done(client, "/api/v1/query", {"prompt": "hello there"})
    assert {e.event for e in events} <= set(event["properties"]["event"]["enum"])


async def test_control_messages_are_announced_on_the_operators_channel(
    a: Instance, b: Instance, api_key: str, valkey: Any
) -> None:
    """On one node, `SUBSCRIBE agentapi:control` shows the control traffic (the channel SPEC 5 names); delivery
    itself goes through the owner's control stream."""
    pubsub = valkey.pubsub()
    await pubsub.subscribe(CONTROL_ANNOUNCE_CHANNEL)
    try:
        async with a.client(api_key) as ca, b.client(api_key) as cb:
            sid = await new_session(ca)
            resp, events = await start_stream(ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "sleep 30"})
            try:
                await next_event(events, "message")
                assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
                done = await next_event(events, "done", timeout=5)
            finally:
                await resp.aclose()
        assert done.data == {"reason": "interrupted"}

        async def announced() -> Any:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            return message and control.decode(message["data"])

        interrupt = await wait_for(announced, timeout=5, what="the interrupt on agentapi:control")
        assert isinstance(interrupt, control.Interrupt) and str(interrupt.session_id) == sid
    finally:
        await pubsub.aclose()
