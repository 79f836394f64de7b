"""A run's end is one moment for every observer (issue 18 #5, #13): the session's state, the lease and `done`
agree, and a follower's cursor beyond the run's last event is refused at once."""

from __future__ import annotations

import time

from tests.helpers import assert_problem, collect_sse, iter_sse, wait_for
from tests.instances import Instance


async def test_a_finished_burst_frees_its_session_at_once(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        result_at = done_at = 0.0
        async with ca.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "burst 20000"}) as resp:
            async for ev in iter_sse(resp):
                if ev.event == "result":
                    result_at = time.monotonic()
                if ev.event == "done":
                    done_at = time.monotonic()
                    break
        # Persistence keeps up with the agent (backpressure), so `done` does not wait for a backlog.
        assert done_at - result_at < 5.0, done_at - result_at
        session = (await cb.get(f"/api/v1/sessions/{sid}")).json()
        assert session["status"] == "completed" and session["active_run"] is None
        # Over means over, on every instance: interrupt has nothing to stop, a new run starts.
        assert_problem(await cb.post(f"/api/v1/sessions/{sid}/interrupt"), 409, "NOT_RUNNING")
        async with cb.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "next"}) as again:
            assert again.status_code == 200, await again.aread()
            assert (await collect_sse(again))[-1].data == {"reason": "completed"}
        messages = (await ca.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1, "offset": 0})).json()
        assert messages["total"] >= 20000


async def test_last_event_id_beyond_a_live_runs_newest_event_is_400(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        async with ca.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 3"}) as resp:
            run_id = resp.headers["x-run-id"]
            async for ev in iter_sse(resp):
                if ev.event == "message":
                    assert ev.id is not None
                    ms, _, seq = ev.id.partition("-")
                    beyond = f"{int(ms) + 60_000}-{seq}"
                    break
            started = time.monotonic()
            for client in (ca, cb):
                for path in (f"/api/v1/sessions/{sid}/events", f"/api/v1/runs/{run_id}/events"):
                    early = await client.get(path, headers={"Last-Event-ID": beyond})
                    assert_problem(early, 400, "VALIDATION_ERROR")
            assert time.monotonic() - started < 5.0
            # A cursor at the newest event follows on and ends with `done`.
            async with cb.stream("GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": ev.id}) as follow:
                tail = await collect_sse(follow)
            assert tail[-1].event == "done"


async def test_the_moment_a_session_reads_over_a_new_run_is_accepted(a: Instance, b: Instance, api_key: str) -> None:
    """Issue 18 #5: the session's visible state, the lease and `done` agree. Before the fix a burst's session read
    `completed` (active_run null) for seconds while its events drained, and a new run got 409 SESSION_BUSY."""
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        async with ca.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "burst 50000"}) as resp:
            assert resp.status_code == 200

            async def over() -> dict[str, object] | None:
                session: dict[str, object] = (await cb.get(f"/api/v1/sessions/{sid}")).json()
                return session if session["status"] != "running" else None

            session = await wait_for(over, timeout=120, interval=0.02, what="the session to read over")
            assert session["active_run"] is None
            async with cb.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "next"}) as again:
                assert again.status_code == 200, await again.aread()
                assert (await collect_sse(again, timeout=60))[-1].data == {"reason": "completed"}
