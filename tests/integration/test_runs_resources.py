"""Runs as resources (SPEC §7): background runs, wait, cancel, the per-session queue and if_busy, user turns,
and the Postgres fence on run starts, across two instances on real Postgres and Valkey."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import httpx
from valkey.asyncio import Valkey

from tests.helpers import assert_problem, collect_sse, iter_sse, wait_for
from tests.instances import Instance

RUN_FIELDS = {
    "id",
    "session_id",
    "status",
    "input",
    "if_busy",
    "created_at",
    "started_at",
    "ended_at",
    "instance_id",
    "queue_position",
    "result",
    "error",
}
ENDED = {"completed", "interrupted", "error", "cancelled"}


async def new_session(client: httpx.AsyncClient) -> str:
    resp = await client.post("/api/v1/sessions", json={})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def start_run(client: httpx.AsyncClient, sid: str, prompt: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": prompt, **extra})
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    assert resp.headers["location"] == f"/api/v1/runs/{body['id']}"
    return body


async def wait_run(client: httpx.AsyncClient, run_id: str, timeout: float = 30) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/runs/{run_id}/wait", params={"timeout": timeout})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def run_events(client: httpx.AsyncClient, run_id: str, **params: Any) -> list[Any]:
    async with client.stream("GET", f"/api/v1/runs/{run_id}/events", params=params) as resp:
        assert resp.status_code == 200, await resp.aread()
        return await collect_sse(resp, timeout=60)


async def test_background_run_lifecycle_across_instances(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        run = await start_run(ca, sid, "hello there", max_turns=3)
        assert set(run) == RUN_FIELDS
        assert run["session_id"] == sid
        assert run["status"] == "running"
        assert run["input"] == {"prompt": "hello there", "max_turns": 3}
        assert run["if_busy"] == "reject"
        assert run["instance_id"] == a.app.state["settings"].app.instance_id
        # Found and waited for from the other instance.
        done = await wait_run(cb, run["id"])
        assert done["status"] == "completed"
        assert done["result"]["result"] == "Echo: hello there"
        assert done["result"]["run_id"] == run["id"]
        assert done["ended_at"] is not None and done["error"] is None
        listed = (await cb.get(f"/api/v1/sessions/{sid}/runs")).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == run["id"]
        # The run's events replay from any instance, its user turn right after init.
        events = await run_events(cb, run["id"])
        names = [e.event for e in events]
        assert names[0] == "init" and names[-1] == "done"
        assert events[1].event == "message"
        assert events[1].data["role"] == "user"
        assert events[1].data["content"] == [{"type": "text", "text": "hello there"}]
        assert all(e.data.get("run_id", run["id"]) == run["id"] for e in events if e.event in ("init", "result"))


async def test_post_runs_without_session_creates_one(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        resp = await ca.post("/api/v1/runs", json={"prompt": "hi"})
        assert resp.status_code == 202, resp.text
        run = resp.json()
        session = (await ca.get(f"/api/v1/sessions/{run['session_id']}")).json()
        assert session["title"] == "hi"
        assert (await wait_run(ca, run["id"]))["status"] == "completed"


async def test_wait_with_a_timeout_returns_the_run_as_it_is(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        run = await start_run(ca, sid, "sleep 2")
        early = await wait_run(cb, run["id"], timeout=0.3)
        assert early["status"] == "running"
        assert (await wait_run(cb, run["id"], timeout=0))["status"] == "running"
        late = await wait_run(cb, run["id"], timeout=30)
        assert late["status"] == "completed"


async def test_cancel_running_queued_and_ended(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        first = await start_run(ca, sid, "sleep 30")
        queued = await start_run(ca, sid, "never runs", if_busy="enqueue")
        assert queued["status"] == "queued" and queued["queue_position"] == 1
        assert (await cb.get(f"/api/v1/sessions/{sid}")).json()["queued_runs"] == 1
        # Queued → cancelled at once, from the other instance.
        resp = await cb.post(f"/api/v1/runs/{queued['id']}/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "cancelled" and resp.json()["queue_position"] is None
        assert (await cb.get(f"/api/v1/sessions/{sid}")).json()["queued_runs"] == 0
        # Running → interrupted, wherever it runs.
        resp = await cb.post(f"/api/v1/runs/{first['id']}/cancel")
        assert resp.status_code == 202, resp.text
        ended = await wait_run(cb, first["id"])
        assert ended["status"] == "interrupted"
        events = await run_events(ca, first["id"])
        assert events[-1].data == {"reason": "interrupted"}
        # Ended → unchanged, idempotent.
        again = await cb.post(f"/api/v1/runs/{first['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "interrupted"
        assert (await cb.get(f"/api/v1/runs/{queued['id']}")).json()["status"] == "cancelled"
        runs = (await ca.get(f"/api/v1/sessions/{sid}/runs", params={"status": "cancelled"})).json()
        assert [r["id"] for r in runs["items"]] == [queued["id"]]


async def test_enqueue_from_both_instances_runs_one_at_a_time_in_order(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        # Long enough that all twenty are queued before it ends (then their positions are 1..20).
        head = await start_run(ca, sid, "sleep 5")

        async def enqueue(i: int) -> dict[str, Any]:
            client = ca if i % 2 else cb
            return await start_run(client, sid, f"turn {i}", if_busy="enqueue")

        queued = await asyncio.gather(*(enqueue(i) for i in range(20)))
        assert all(r["status"] == "queued" for r in queued)
        assert sorted(r["queue_position"] for r in queued) == list(range(1, 21))
        ids = [head["id"], *(r["id"] for r in queued)]
        finals = [await wait_run(ca if i % 2 else cb, rid, timeout=60) for i, rid in enumerate(ids)]
        assert all(r["status"] == "completed" for r in finals), [r["status"] for r in finals]
        # Never two at once, each exactly once, in queue order.
        by_start = sorted(finals, key=lambda r: r["started_at"])
        for prev, nxt in itertools.pairwise(by_start):
            assert prev["ended_at"] <= nxt["started_at"], (prev, nxt)
        order = {r["id"]: r["queue_position"] for r in queued}
        started_order = [r["id"] for r in by_start[1:]]
        assert started_order == sorted(started_order, key=lambda rid: order[rid])
        messages = (await ca.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1000})).json()["items"]
        dones = [m["run_id"] for m in messages if m["event"] == "done"]
        assert sorted(dones) == sorted(ids)  # one done per run, none twice
        session = (await ca.get(f"/api/v1/sessions/{sid}")).json()
        assert session["queued_runs"] == 0 and session["active_run"] is None


async def test_if_busy_interrupt_goes_next_ahead_of_the_queue(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        active = await start_run(ca, sid, "sleep 30")
        waiting = await start_run(ca, sid, "waiting", if_busy="enqueue")
        urgent = await start_run(cb, sid, "urgent", if_busy="interrupt")
        assert urgent["status"] == "queued" and urgent["queue_position"] == 1
        assert (await wait_run(cb, active["id"]))["status"] == "interrupted"
        final_urgent = await wait_run(cb, urgent["id"])
        final_waiting = await wait_run(cb, waiting["id"])
        assert final_urgent["status"] == final_waiting["status"] == "completed"
        assert final_urgent["started_at"] < final_waiting["started_at"]


async def test_reject_is_409_and_queue_full_past_100(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        sid = await new_session(ca)
        await start_run(ca, sid, "sleep 30")
        assert_problem(await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "x"}), 409, "SESSION_BUSY")
        for _ in range(100):
            await start_run(ca, sid, "later", if_busy="enqueue")
        full = await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "x", "if_busy": "enqueue"})
        assert_problem(full, 409, "QUEUE_FULL")
        # /query takes if_busy too: a queued stream pings until its run starts.
        assert_problem(await ca.post("/api/v1/query", json={"prompt": "x", "session_id": sid}), 409, "SESSION_BUSY")
        await ca.post(f"/api/v1/sessions/{sid}/interrupt")


async def test_deleting_a_session_cancels_its_queue(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        sid = await new_session(ca)
        active = await start_run(ca, sid, "sleep 30")
        queued = await start_run(ca, sid, "never", if_busy="enqueue")
        assert_problem(await ca.delete(f"/api/v1/sessions/{sid}"), 409, "SESSION_BUSY")
        # Interrupt, and cancel the queued one before its turn... by deleting once the active run has ended.
        cancelled = await ca.post(f"/api/v1/runs/{queued['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        await ca.post(f"/api/v1/runs/{active['id']}/cancel")
        await wait_run(ca, active["id"])
        later = await start_run(ca, sid, "sleep 30")
        again = await start_run(ca, sid, "never either", if_busy="enqueue")
        await ca.post(f"/api/v1/runs/{later['id']}/cancel")
        # The queued run may start the moment `later` ends; delete only once the session is free.
        await wait_run(ca, later["id"])

        async def deleted() -> bool:
            resp = await ca.delete(f"/api/v1/sessions/{sid}")
            if resp.status_code == 409:
                await ca.post(f"/api/v1/sessions/{sid}/interrupt")
            return resp.status_code == 204

        await wait_for(deleted, timeout=20, interval=0.2, what="session deleted")
        status = (await ca.get(f"/api/v1/runs/{again['id']}")).json()["status"]
        assert status in ENDED


async def test_queued_stream_pings_then_streams_its_run(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        first = await start_run(ca, sid, "sleep 1")
        async with cb.stream(
            "POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "after you", "if_busy": "enqueue"}
        ) as resp:
            assert resp.status_code == 200
            run_id = resp.headers["x-run-id"]
            events = await collect_sse(resp, timeout=30)
        assert run_id != first["id"]
        assert events[0].event == "init" and events[0].data["run_id"] == run_id
        assert events[-1].data == {"reason": "completed"}
        assert all(e.data.get("run_id", run_id) == run_id for e in events)


async def test_answers_are_recorded_as_user_turns(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        async with ca.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "ask favourite colour?"}) as r:
            events = iter_sse(r).__aiter__()
            question = None
            async for ev in events:
                if ev.event == "question":
                    question = ev
                    break
            assert question is not None
            resp = await cb.post(
                f"/api/v1/sessions/{sid}/answer",
                json={"answer": "green", "question_id": question.data["question_id"]},
            )
            assert resp.status_code == 200, resp.text
            async for ev in events:
                if ev.event == "done":
                    break
        items = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
        users = [m["data"] for m in items if m["event"] == "message" and m["data"]["role"] == "user"]
        assert [u["content"][0]["text"] for u in users] == ["ask favourite colour?", "green"]
        assert users[1]["question_id"] == question.data["question_id"]
        # Forks copy both sides.
        fork = (await ca.post(f"/api/v1/sessions/{sid}/fork", json={})).json()
        forked = (await ca.get(f"/api/v1/sessions/{fork['id']}/messages")).json()["items"]
        assert [m["data"] for m in forked if m["event"] == "message" and m["data"]["role"] == "user"] == users


async def test_bad_run_input_is_400(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca:
        sid = await new_session(ca)
        assert_problem(
            await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "x", "if_busy": "maybe"}),
            400,
            "VALIDATION_ERROR",
        )
        assert_problem(await ca.get("/api/v1/runs/not-a-uuid"), 400, "VALIDATION_ERROR")
        run = await start_run(ca, sid, "hi")
        for timeout in ("-1", "301", "soon"):
            assert_problem(
                await ca.get(f"/api/v1/runs/{run['id']}/wait", params={"timeout": timeout}), 400, "VALIDATION_ERROR"
            )
        assert_problem(
            await ca.get(f"/api/v1/sessions/{sid}/runs", params={"status": "sleeping"}), 400, "VALIDATION_ERROR"
        )


async def test_runs_are_invisible_to_other_keys(a: Instance, api_key: str, other_api_key: str) -> None:
    async with a.client(api_key) as ca, a.client(other_api_key) as co:
        sid = await new_session(ca)
        run = await start_run(ca, sid, "hi")
        for call in (
            co.get(f"/api/v1/runs/{run['id']}"),
            co.get(f"/api/v1/runs/{run['id']}/wait", params={"timeout": 0}),
            co.post(f"/api/v1/runs/{run['id']}/cancel"),
            co.get(f"/api/v1/runs/{run['id']}/events"),
        ):
            assert_problem(await call, 404, "RUN_NOT_FOUND")
        assert_problem(await co.get(f"/api/v1/sessions/{sid}/runs"), 404, "SESSION_NOT_FOUND")


async def test_valkey_flush_never_lets_a_second_run_start(
    a: Instance, b: Instance, api_key: str, valkey: Valkey
) -> None:
    """Issue 18 #1: the lease lives in Valkey, but Postgres fences run starts: after a FLUSHALL no other
    instance can start a run on a session whose run is still live, and the live run is never reaped."""
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        for attempt in range(5):
            sid = await new_session(ca)
            async with ca.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 2"}) as stream:
                events = iter_sse(stream).__aiter__()
                async for ev in events:
                    if ev.event == "message" and ev.data["role"] == "assistant":
                        break
                await valkey.flushall()
                await asyncio.sleep(random.uniform(0, 0.05))
                second = await cb.post(f"/api/v1/sessions/{sid}/resume", json={"prompt": "me too"})
                assert_problem(second, 409, "SESSION_BUSY")
                rest = [ev async for ev in events if not ev.comment]
            names = [e.event for e in rest]
            assert names.count("done") == 1 and names[-1] == "done", (attempt, names)
            assert rest[-1].data == {"reason": "completed"}, attempt

            async def persisted(sid: str = sid) -> list[dict[str, Any]]:
                page = await cb.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1000})
                found: list[dict[str, Any]] = page.json()["items"]
                return found if found and found[-1]["event"] == "done" else []

            items = await wait_for(persisted, timeout=10, what="done persisted")
            assert [m["event"] for m in items].count("done") == 1
            assert "RUN_LOST" not in str(items)


async def test_a_cancelled_queued_runs_stream_ends_with_done_at_once(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        blocker = await start_run(ca, sid, "sleep 20")
        queued = await start_run(ca, sid, "never", if_busy="enqueue")
        assert queued["created_at"] <= (queued["started_at"] or queued["created_at"])
        assert blocker["created_at"] <= blocker["started_at"]
        async with cb.stream("GET", f"/api/v1/runs/{queued['id']}/events") as follow:
            assert (await ca.post(f"/api/v1/runs/{queued['id']}/cancel")).json()["status"] == "cancelled"
            events = await collect_sse(follow, timeout=5)
        assert [e.event for e in events] == ["done"]
        assert events[0].data == {"reason": "interrupted"}
        await ca.post(f"/api/v1/runs/{blocker['id']}/cancel")


async def test_an_answer_without_question_id_is_recorded_with_the_question_it_answered(
    a: Instance, b: Instance, api_key: str
) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        run = await start_run(ca, sid, "ask ready?")

        async def waiting() -> bool:
            items = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
            return any(m["event"] == "question" for m in items)

        await wait_for(waiting, timeout=10, what="the question")
        assert (await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "yes"})).status_code == 200
        await wait_run(cb, run["id"])
        items = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
        question = next(m["data"] for m in items if m["event"] == "question")
        answer = [m["data"] for m in items if m["event"] == "message" and m["data"]["role"] == "user"][-1]
        assert answer["question_id"] == question["question_id"]


async def test_run_input_is_the_options_as_given(a: Instance, b: Instance, api_key: str) -> None:
    """`input` keeps what the client sent, `null` and `false` included, and adds nothing it left out."""
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = await new_session(ca)
        sent = {"prompt": "as given", "model": None, "include_partial_messages": False, "allowed_tools": []}
        created = await ca.post(f"/api/v1/sessions/{sid}/runs", json=sent)
        assert created.status_code == 202, created.text
        run = created.json()
        assert run["input"] == sent
        done = await wait_run(cb, run["id"])
        assert done["status"] == "completed" and done["input"] == sent
        # Queued, then started from the stored input on another instance: the same options.
        first = await start_run(ca, sid, "sleep 0.5")
        queued = (await cb.post(f"/api/v1/sessions/{sid}/runs", json={**sent, "if_busy": "enqueue"})).json()
        assert queued["status"] == "queued" and queued["input"] == sent
        assert (await wait_run(ca, first["id"]))["status"] == "completed"
        assert (await wait_run(ca, queued["id"]))["input"] == sent
        bare = await start_run(cb, sid, "only a prompt")
        assert bare["input"] == {"prompt": "only a prompt"}


async def test_a_deleted_sessions_run_stream_ends_at_once(a: Instance, api_key: str) -> None:
    """Its events went with the session: the run's stream ends (empty) instead of waiting for a `done` that
    will never reach Postgres."""
    async with a.client(api_key) as ca:
        sid = await new_session(ca)
        run = await start_run(ca, sid, "hello")
        assert (await wait_run(ca, run["id"]))["status"] == "completed"
        assert (await ca.delete(f"/api/v1/sessions/{sid}")).status_code == 204
        events = await asyncio.wait_for(run_events(ca, run["id"]), timeout=5)  # the wait for a late done is 10 s
        assert events == []
