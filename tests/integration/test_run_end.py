"""A run's end is one moment for every observer (issue 18 #5, #13): the session's state, the lease and `done`
agree, and a follower's cursor beyond the run's last event is refused at once."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from sqlalchemy import delete

from app.db.models import SessionEvent
from app.domain.runs.streams import EventFollower
from app.lib.sse import SSEFrame
from app.lib.valkey.event_log import LogEntry
from app.lib.valkey.stream_hub import Subscription
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


async def test_a_follower_that_just_missed_done_finds_it_in_the_stream(a: Instance, api_key: str) -> None:
    """A read that returns just before `done` is appended, then the lease gone: the follower reads the stream on
    before falling back to Postgres, whose copy lags under load (the persister batches). Before, it replayed
    Postgres without `done`, waited 10 s and ended the stream without it (seen at 1,000 live runs)."""
    async with a.client(api_key) as ca:
        sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
        run = (await ca.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "hello"})).json()
        assert (await ca.get(f"/api/v1/runs/{run['id']}/wait")).json()["status"] == "completed"
    components = a.components
    # Postgres has not caught up with the stream yet: its copy of the run has no `done`.
    async with components.alchemy.get_session() as db:
        await db.execute(
            delete(SessionEvent).where(SessionEvent.run_id == UUID(run["id"]), SessionEvent.event == "done")
        )
        await db.commit()
    base = components.event_follower

    class JustMissedDone(EventFollower):
        missed = False

        async def _read(
            self, key: str, last: str, block_ms: int | None, sub: Subscription | None = None
        ) -> list[LogEntry] | None:
            if not self.missed:
                self.missed = True
                return []  # this read returned a moment before `done` was appended
            return await super()._read(key, last, block_ms, sub)

    follower = JustMissedDone(base.events, base.lease, base.store, base.alchemy, base.ping_interval)
    frames: list[SSEFrame] = []
    async with asyncio.timeout(5):  # the Postgres fallback would wait 10 s for a `done` that is not coming
        async for batch in follower.follow(UUID(sid), UUID(run["id"]), "0"):
            frames.extend(batch or [])
    assert [f.event for f in frames][-1] == "done"
    assert frames[0].event == "init"
