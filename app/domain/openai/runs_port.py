"""The one place the OpenAI-compatible API touches the runs domain.

`RunsPort` has exactly the methods of the runs-as-resources RunService (SPEC §7): `create`, `get`, `wait`,
`cancel`, `run_events`. Its body is written for today's `RunService` (start + stream by session); at the merge
with the run table its methods become one-line calls, and `PortRun` becomes `app.domain.runs.schemas.Run`.

What today's code cannot give, and what the run table brings:
- `get`: status, result and error come from the run's persisted events (`session_event.run_id`, not indexed);
  `input`, `created_at` and `instance_id`, and the run itself before its first event reaches Postgres, from a
  record `create` writes to Valkey (`agentapi:{run:<id>}:openai-start`, 1 h; also kept in process). After a
  Valkey flush an ended run is still found, with `input` reduced to the user's-turn prompt when the events hold
  one. `queue_position` is always null.
- `create(if_busy=...)`: only `reject`; `enqueue` / `interrupt` raise NotImplementedError.
- `cancel`: interrupts the session's active run if it is this run; a queued run cannot exist yet.
- `delete`: a run cannot be deleted today (NotImplementedError): /v1 DELETE needs a `deleted_at` on the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from msgspec import Struct
from sqlalchemy import select

from app.db.models import AgentSession, SessionEvent
from app.domain.runs.schemas import RunOptions
from app.domain.runs.services import STREAM_START, RunService
from app.lib.problems import ApiError
from app.lib.sse import SSEFrame
from app.lib.valkey.errors import VALKEY_ERRORS

RunStatus = Literal["queued", "running", "completed", "interrupted", "error", "cancelled"]
ENDED: frozenset[str] = frozenset({"completed", "interrupted", "error", "cancelled"})
FINAL_BY_REASON: dict[str, RunStatus] = {"completed": "completed", "interrupted": "interrupted", "error": "error"}


class PortRunError(Struct):
    code: str
    message: str


class PortRun(Struct, kw_only=True):
    """SPEC §7's Run (stand-in for `app.domain.runs.schemas.Run` until the run table lands)."""

    id: UUID
    session_id: UUID
    status: RunStatus
    input: dict[str, Any]
    if_busy: str = "reject"
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    instance_id: str | None = None
    queue_position: int | None = None
    result: dict[str, Any] | None = None
    error: PortRunError | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def run_not_found(run_id: UUID) -> ApiError:
    return ApiError(404, "RUN_NOT_FOUND", f"Run {run_id} not found.", title="Run not found")


# Runs this instance started: {run_id: (owner_key_id, PortRun)}, one dict per app (in its state). Bridges the
# moment between start and the first persisted event, and keeps the run's input (today's events may not record
# the user's turn); the run table makes it unnecessary.
StartedRuns = dict[UUID, tuple[UUID, PortRun]]
_STARTED_MAX = 10_000
# And for every instance, a Valkey record of the run's start (own hash slot: only the run id is known on lookup),
# kept as long as the run's events are.
STARTED_TTL = 3600


def started_key(run_id: UUID) -> str:
    return f"agentapi:{{run:{run_id}}}:openai-start"


class StartedRecord(Struct):
    owner_key_id: UUID
    run: PortRun


class RunsPort:
    def __init__(self, runs: RunService, alchemy: SQLAlchemyAsyncConfig, started: StartedRuns) -> None:
        self.runs = runs
        self.alchemy = alchemy
        self.started = started

    async def create(
        self, owner_key_id: UUID, session_id: UUID | None, options: RunOptions, *, if_busy: str = "reject"
    ) -> PortRun:
        if if_busy != "reject":
            raise NotImplementedError("if_busy other than 'reject' needs the run table")
        session, run_id = await self.runs.start(owner_key_id, session_id, options)
        now = datetime.now(UTC)
        run = PortRun(
            id=run_id,
            session_id=session.id,
            status="running",
            input=msgspec.structs.asdict(options),
            created_at=now,
            started_at=now,
            instance_id=self.runs.manager.instance_id,
        )
        if len(self.started) >= _STARTED_MAX:
            self.started.clear()
        self.started[run_id] = (owner_key_id, run)
        record = msgspec.json.encode(StartedRecord(owner_key_id=owner_key_id, run=run)).decode()
        with contextlib.suppress(*VALKEY_ERRORS):
            await self.runs.manager.infra.markers.set(started_key(run_id), record, STARTED_TTL)
        return run

    async def _started(self, owner_key_id: UUID, run_id: UUID) -> PortRun | None:
        """The run as its start recorded it: this instance's memory, else the Valkey record any instance reads."""
        local = self.started.get(run_id)
        if local is not None:
            return local[1] if local[0] == owner_key_id else None
        try:
            raw = await self.runs.manager.infra.markers.get(started_key(run_id))
        except VALKEY_ERRORS:
            return None
        if raw is None:
            return None
        record = msgspec.json.decode(raw, type=StartedRecord)
        return record.run if record.owner_key_id == owner_key_id else None

    async def get(self, owner_key_id: UUID, run_id: UUID) -> PortRun:
        async with self.alchemy.get_session() as db:
            rows = (
                (
                    await db.execute(
                        select(SessionEvent)
                        .join(AgentSession, AgentSession.id == SessionEvent.session_id)
                        .where(
                            SessionEvent.run_id == run_id,
                            AgentSession.owner_key_id == owner_key_id,
                            SessionEvent.event.in_(("init", "message", "result", "error", "done")),
                        )
                        .order_by(SessionEvent.stream_ms, SessionEvent.stream_seq)
                    )
                )
                .scalars()
                .all()
            )
        started = await self._started(owner_key_id, run_id)
        if not rows:
            if started is None:
                raise run_not_found(run_id)
            return started
        run = _run_from_events(run_id, rows)
        if started is not None:
            # Today's events do not record the run's options (nor always the user's turn): its start did.
            run.input = started.input
            run.created_at = started.created_at
            run.instance_id = started.instance_id
        return run

    async def wait(self, owner_key_id: UUID, run_id: UUID, timeout: float) -> PortRun:
        run = await self.get(owner_key_id, run_id)
        if run.ended or timeout <= 0:
            return run
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.run_events(owner_key_id, run_id):
                    pass
        except TimeoutError:
            return await self.get(owner_key_id, run_id)
        # `done` is out; its Postgres row follows within the recorder's flush.
        while True:
            run = await self.get(owner_key_id, run_id)
            if run.ended or time.monotonic() > deadline:
                return run
            await asyncio.sleep(0.02)

    async def cancel(self, owner_key_id: UUID, run_id: UUID) -> PortRun:
        run = await self.get(owner_key_id, run_id)
        if run.ended:
            return run
        lease = await self.runs.manager.current_lease(run.session_id)
        if lease is not None and lease.run_id == run_id:
            await self.runs.interrupt(owner_key_id, run.session_id)
        return await self.get(owner_key_id, run_id)

    async def run_events(
        self, owner_key_id: UUID, run_id: UUID, after: str = STREAM_START
    ) -> AsyncIterator[list[SSEFrame] | None]:
        """This run's events after `after` (exclusive), live until its `done`; None items are idle ticks."""
        run = await self.get(owner_key_id, run_id)
        async with self.alchemy.get_session() as db:
            last_run_id = (
                await db.execute(select(AgentSession.last_run_id).where(AgentSession.id == run.session_id))
            ).scalar_one_or_none()
        if last_run_id is not None and last_run_id != run_id:
            # A later run of the session owns the Valkey stream now: this one is over, replay it from Postgres.
            yield await self.runs.follower._replay_from_db(run.session_id, run_id, after)
            return
        async for batch in self.runs.stream(run.session_id, after, run_id=run_id):
            yield batch

    async def delete(self, owner_key_id: UUID, run_id: UUID) -> None:
        """Not part of §7's RunService: /v1 DELETE needs a soft delete on the run table."""
        raise NotImplementedError("deleting a run needs the run table")


def _run_from_events(run_id: UUID, rows: Any) -> PortRun:
    status: RunStatus = "running"
    prompt: str | None = None
    result: dict[str, Any] | None = None
    error: PortRunError | None = None
    started_at = rows[0].created_at
    ended_at: datetime | None = None
    session_id = rows[0].session_id
    for row in rows:
        data = row.data or {}
        if row.event == "message" and prompt is None and data.get("role") == "user":
            prompt = "".join(b.get("text", "") for b in data.get("content") or () if b.get("type") == "text")
        elif row.event == "result":
            result = data
        elif row.event == "error":
            error = PortRunError(code=str(data.get("code", "AGENT_ERROR")), message=str(data.get("message", "")))
        elif row.event == "done":
            status = FINAL_BY_REASON.get(str(data.get("reason")), "error")
            ended_at = row.created_at
    return PortRun(
        id=run_id,
        session_id=session_id,
        status=status,
        input={"prompt": prompt or ""},
        created_at=started_at,
        started_at=started_at,
        ended_at=ended_at,
        result=result,
        error=error,
    )
