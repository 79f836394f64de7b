"""Run use cases behind the HTTP API: start (stream, single, background), find, wait, cancel, follow,
interrupt, answer. Every one works from any instance: Postgres says which run is where."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from uuid import UUID

import msgspec

from app.db.models import AgentSession
from app.domain.runs.errors import invalid_event_id, no_pending_question, not_running, valkey_unavailable
from app.domain.runs.manager import RunManager
from app.domain.runs.recorder import persist_events, stream_fields
from app.domain.runs.schemas import IfBusy, QueryResult, Run, RunError, RunOptions, RunPage
from app.domain.runs.store import RunStore, Submitted, is_ended
from app.domain.runs.streams import EventFollower
from app.domain.sessions.reader import SessionReader
from app.domain.sessions.schemas import ActiveRun, Usage
from app.domain.sessions.valkey_keys import events_key
from app.lib.problems import ApiError, is_valkey_unavailable
from app.lib.sse import SSEFrame
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import parse_entry_id

logger = logging.getLogger(__name__)

STREAM_START = "0-0"
SESSION_TITLE_CHARS = 80
WAIT_POLL_SECONDS = 0.25

# Valkey stream ids are two unsigned 64-bit numbers, Postgres keeps them as signed bigints: larger parts are
# not ids at all (and would fail deep inside the stream, after the 200 went out).
MAX_EVENT_ID_PART = 2**63 - 1

FrameStream = AsyncIterator[list[SSEFrame] | None]


def parse_after(value: str | None) -> str:
    if value is None or value == "":
        return STREAM_START
    try:
        ms, seq = parse_entry_id(value.strip())
    except ValueError:
        raise invalid_event_id("Last-Event-ID / after must be a stream id like 1700000000000-0.") from None
    if ms < 0 or seq < 0:
        raise invalid_event_id("Event ids are non-negative.")
    if ms > MAX_EVENT_ID_PART or seq > MAX_EVENT_ID_PART:
        raise invalid_event_id(f"Event id parts must be at most {MAX_EVENT_ID_PART}.")
    return f"{ms}-{seq}"


class RunService:
    def __init__(self, reader: SessionReader, manager: RunManager, store: RunStore, follower: EventFollower) -> None:
        self.reader = reader
        self.manager = manager
        self.store = store
        self.follower = follower

    # -- starting ------------------------------------------------------------------------------------

    async def create(
        self, owner_key_id: UUID, session_id: UUID | None, options: RunOptions, *, if_busy: IfBusy = "reject"
    ) -> Submitted:
        """Records and (when its session is free) starts a run; without `session_id` its session is created
        with it, in one transaction."""
        new_session: AgentSession | None = None
        if session_id is None:
            self.manager.validate(options, model=None, permission_mode=None)
            new_session = AgentSession(
                owner_key_id=owner_key_id,
                title=options.prompt[:SESSION_TITLE_CHARS],
                model=options.model or None,
                permission_mode=options.permission_mode or None,
                tags=[],
                meta={},
            )
        else:
            session = await self.reader.get(session_id, owner_key_id)
            self.manager.validate(options, model=session.model, permission_mode=session.permission_mode)
        return await self.manager.submit(owner_key_id, session_id, options, if_busy=if_busy, new_session=new_session)

    async def single(
        self,
        owner_key_id: UUID,
        session_id: UUID | None,
        options: RunOptions,
        if_busy: IfBusy,
        *,
        on_started: Callable[[UUID], Awaitable[None]] | None = None,
    ) -> QueryResult:
        """Starts a run and waits for its end; a failed run is the same shape with `is_error` and `error`.
        `on_started` hears the run's id as soon as it exists (an Idempotency-Key repeat then waits for it)."""
        submitted = await self.create(owner_key_id, session_id, options, if_busy=if_busy)
        run = submitted.run
        if on_started is not None:
            await on_started(run.id)
        async for batch in self.follower.follow(run.session_id, run.id, STREAM_START):
            if batch and batch[-1].event == "done":
                break
        return query_result(await self.store.get(owner_key_id, run.id))

    # -- finding -------------------------------------------------------------------------------------

    async def get(self, owner_key_id: UUID, run_id: UUID) -> Run:
        return await self.store.get(owner_key_id, run_id)

    async def list_for_session(
        self, owner_key_id: UUID, session_id: UUID, *, statuses: Sequence[str], limit: int, offset: int
    ) -> RunPage:
        await self.reader.get(session_id, owner_key_id)  # 404 for another key's session
        return await self.store.list_for_session(
            owner_key_id, session_id, statuses=statuses, limit=limit, offset=offset
        )

    async def wait(self, owner_key_id: UUID, run_id: UUID, timeout: float) -> Run:
        """The run once it has ended, or as it is when `timeout` seconds have passed."""
        run = await self.store.get(owner_key_id, run_id)
        if is_ended(run.status) or timeout <= 0:
            return run
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                try:
                    # Woken by the run's own `done`, wherever it runs (the final status is committed before it).
                    async for batch in self.follower.follow(run.session_id, run.id, STREAM_START):
                        if batch and batch[-1].event == "done":
                            break
                except Exception as exc:
                    if not is_valkey_unavailable(exc):
                        raise
                    # Without Valkey, Postgres alone says when it ends.
                    while not is_ended(await self.store.status_of(run_id)) and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(WAIT_POLL_SECONDS)
        return await self.store.get(owner_key_id, run_id)

    # -- following -----------------------------------------------------------------------------------

    async def run_events(self, owner_key_id: UUID, run_id: UUID, after: str = STREAM_START) -> tuple[Run, FrameStream]:
        run = await self.store.get(owner_key_id, run_id)
        return run, await self._open(run, after)

    async def session_events(self, owner_key_id: UUID, session_id: UUID, after: str) -> tuple[Run, FrameStream] | None:
        """The current or last run's events; None when the session never ran (the caller answers 204)."""
        session = await self.reader.get(session_id, owner_key_id)
        run_id = session.active_run.run_id if session.active_run is not None else None
        if run_id is None:
            if session.last_run_at is None:
                return None
            run_id = await self.store.last_started_run(session_id)
            if run_id is None:
                return None
        return await self.run_events(owner_key_id, run_id, after)

    async def _open(self, run: Run, after: str) -> FrameStream:
        try:
            await self.manager.require_valkey(run.session_id)
        except ApiError:
            if not is_ended(run.status):
                raise
            # An ended run is all in Postgres: it replays without Valkey.
            return self._replay(run, after)
        # A live run's client cannot hold an id beyond its newest event (an ended run just replays nothing).
        if after != STREAM_START and run.status == "running":
            newest = await self.follower.last_event_id(run.session_id, run.id)
            if newest is None or parse_entry_id(after) > parse_entry_id(newest):
                raise invalid_event_id(f"Event id {after} is beyond the last event of run {run.id}.")
        return self.follower.follow(run.session_id, run.id, after)

    async def _replay(self, run: Run, after: str) -> FrameStream:
        frames = await self.follower.replay_from_db(run.session_id, run.id, after)
        if frames:
            yield frames

    # -- reaching the running agent ------------------------------------------------------------------

    async def _active_run(self, owner_key_id: UUID, session_id: UUID) -> ActiveRun:
        session = await self.reader.get(session_id, owner_key_id)
        if session.active_run is None:
            raise not_running(session_id)
        return session.active_run

    async def interrupt(self, owner_key_id: UUID, session_id: UUID) -> UUID:
        await self.manager.require_valkey(session_id)
        active = await self._active_run(owner_key_id, session_id)
        await self.manager.interrupt(session_id, active.run_id, active.instance_id)
        return active.run_id

    async def cancel(self, owner_key_id: UUID, run_id: UUID) -> tuple[Run, bool]:
        """(the run, whether it is being interrupted): queued → cancelled at once; running → interrupted;
        ended → unchanged."""
        run = await self.store.get(owner_key_id, run_id)
        if run.status == "queued":
            if await self.store.cancel_queued(owner_key_id, run_id):
                await self._end_stream_of_cancelled(run)
                return await self.store.get(owner_key_id, run_id), False
            run = await self.store.get(owner_key_id, run_id)  # it started (or ended) meanwhile
        if run.status == "running":
            await self.manager.require_valkey(run.session_id)
            await self.manager.interrupt(run.session_id, run.id, run.instance_id or self.manager.instance_id)
            return run, True
        return run, False

    async def delete(self, owner_key_id: UUID, run_id: UUID) -> None:
        """No longer found by its owner; a run still queued or running is cancelled first."""
        run, _ = await self.cancel(owner_key_id, run_id)
        await self.store.mark_deleted(owner_key_id, run.id)

    async def _end_stream_of_cancelled(self, run: Run) -> None:
        """A cancelled run never started, yet a client may follow it (a queued `/query`): its stream ends with
        `done` `{reason: interrupted}` like any run stopped by a client (the run itself says `cancelled`)."""
        done = msgspec.json.encode({"reason": "interrupted"})
        try:
            (entry_id,) = await self.manager.events.append_many(
                events_key(run.session_id), [stream_fields("done", done, run.id)]
            )
            await persist_events(self.store.alchemy, run.session_id, [(entry_id, "done", done, run.id)])
        except Exception:
            logger.warning("run %s: cancelled, but its stream could not be ended", run.id, exc_info=True)

    async def answer(self, owner_key_id: UUID, session_id: UUID, answer: str, question_id: str | None) -> None:
        await self.manager.require_valkey(session_id)
        active = await self._active_run(owner_key_id, session_id)
        try:
            outcome = await self.manager.answer(session_id, active.run_id, active.instance_id, answer, question_id)
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc
        if outcome == "not_running":
            raise not_running(session_id)
        if outcome != "delivered":
            raise no_pending_question()


def query_result(run: Run) -> QueryResult:
    """`/query/single`'s answer: the run's `result`, or the same shape with `is_error` and `error`."""
    base = run.result or {}
    error = run.error
    if run.status == "completed" and run.result is not None and error is None:
        return msgspec.convert({**base, "error": None}, QueryResult)
    if error is None:
        code = "AGENT_ERROR" if run.status == "error" else run.status.upper()
        error = RunError(code=code, message=f"The run ended: {run.status}.")
    return QueryResult(
        session_id=run.session_id,
        run_id=run.id,
        is_error=True,
        num_turns=int(base.get("num_turns", 0)),
        duration_ms=int(base.get("duration_ms", 0)),
        total_cost_usd=float(base.get("total_cost_usd", 0.0)),
        usage=msgspec.convert(base.get("usage") or {}, Usage),
        result=base.get("result"),
        structured_output=base.get("structured_output"),
        stop_reason=base.get("stop_reason"),
        error=error,
    )
