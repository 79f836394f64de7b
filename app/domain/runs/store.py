"""`RunStore`: runs in Postgres, the source of truth for who runs what.

A run starts only in a transaction that holds the session row (`SELECT ... FOR UPDATE`) and finds no
active run there: that, not the Valkey lease, is the fence, so a lease lost to a Valkey flush can never
let a second run start. Each method opens its own short transaction: no connection is held while a run
waits for its agent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from app.db.models import AgentRun, AgentSession
from app.db.models.run import ENDED_STATUSES
from app.domain.runs.errors import queue_full, run_not_found, session_busy
from app.domain.runs.schemas import IfBusy, Run, RunError, RunOptions, RunPage
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.errors import session_not_found
from app.domain.sessions.schemas import Session
from app.domain.sessions.services import to_schema

MAX_QUEUED_RUNS = 100

# Ran before the commit of a run start, while the session row is held (e.g. take the Valkey lease);
# raising rolls the start back.
BeforeCommit = Callable[["StartedRun"], Awaitable[None]]
# Told of a run's ended or waiting state inside the transaction that commits it (the run row, the event
# type): e.g. the webhooks outbox, so a notice exists exactly when the state it reports does.
RunEventHook = Callable[[AsyncSession, AgentRun, str], Awaitable[None]]

EVENT_BY_STATUS = {
    "completed": "run.completed",
    "error": "run.failed",
    "interrupted": "run.interrupted",
    "cancelled": "run.cancelled",
}


@dataclass(frozen=True)
class StartedRun:
    """A run this instance just moved to `running`: what it needs to drive the agent."""

    run_id: UUID
    session_id: UUID
    owner_key_id: UUID
    options: RunOptions
    session: Session
    resume: str | None
    fork: bool
    started_at: datetime


@dataclass(frozen=True)
class Submitted:
    run: Run
    session: Session
    started: StartedRun | None
    """Set when the run started at once; else it is queued."""
    interrupt: UUID | None = None
    """if_busy=interrupt: the active run to interrupt so this one goes next."""


def run_schema(row: AgentRun, queue_position: int | None = None) -> Run:
    return Run(
        id=row.id,
        session_id=row.session_id,
        status=row.status,  # type: ignore[arg-type]
        input=dict(row.input or {}),
        if_busy=row.if_busy,  # type: ignore[arg-type]
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        instance_id=row.instance_id,
        queue_position=queue_position if row.status == "queued" else None,
        result=row.result,
        error=msgspec.convert(row.error, RunError) if row.error else None,
    )


def _mark_running(session: AgentSession, run: AgentRun, options: RunOptions, instance_id: str, now: datetime) -> None:
    run.status = "running"
    run.started_at = now
    run.instance_id = instance_id
    session.status = "running"
    session.active_run_id = run.id
    session.active_instance_id = instance_id
    session.active_started_at = now
    session.last_run_at = now
    session.last_run_id = run.id
    if options.model:
        session.model = options.model
    if options.permission_mode:
        session.permission_mode = options.permission_mode


def _resume_point(session: AgentSession) -> tuple[str | None, bool]:
    # A fork's first run continues the parent's conversation under a backend session of its own.
    if session.agent_session_id is None and session.agent_fork_from:
        return session.agent_fork_from, True
    return session.agent_session_id, False


def _started(session: AgentSession, run: AgentRun, options: RunOptions, now: datetime) -> StartedRun:
    """The run `_mark_running` made the session's active one, as its start transaction hands it on."""
    resume, fork = _resume_point(session)
    return StartedRun(
        run_id=run.id,
        session_id=session.id,
        owner_key_id=session.owner_key_id,
        options=options,
        session=to_schema(session),
        resume=resume,
        fork=fork,
        started_at=now,
    )


@dataclass
class RunTotals:
    """What a run adds to its session when it ends."""

    agent_session_id: str | None = None
    num_turns: int = 0
    total_cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


async def tell(hook: RunEventHook | None, db: AsyncSession, run: AgentRun, event_type: str) -> None:
    if hook is not None:
        await hook(db, run, event_type)


class RunStore:
    def __init__(self, alchemy: SQLAlchemyAsyncConfig, cache: SessionCache, hook: RunEventHook | None = None) -> None:
        self.alchemy = alchemy
        self.cache = cache
        self.hook = hook

    # -- reads ---------------------------------------------------------------------------------------

    @staticmethod
    def _queue_position() -> Any:
        """1 + the queued runs of the same session ahead of this one (a correlated count)."""
        ahead = AgentRun.__table__.alias("ahead")
        return (
            select(func.count())
            .where(
                ahead.c.session_id == AgentRun.session_id,
                ahead.c.status == "queued",
                or_(
                    ahead.c.queue_rank < AgentRun.queue_rank,
                    and_(ahead.c.queue_rank == AgentRun.queue_rank, ahead.c.queue_seq < AgentRun.queue_seq),
                ),
            )
            .scalar_subquery()
            + 1
        )

    async def get(self, owner_key_id: UUID, run_id: UUID) -> Run:
        async with self.alchemy.get_session() as db:
            found = (
                await db.execute(
                    select(AgentRun, self._queue_position()).where(
                        AgentRun.id == run_id, AgentRun.owner_key_id == owner_key_id, AgentRun.deleted_at.is_(None)
                    )
                )
            ).first()
        if found is None:
            raise run_not_found(run_id)
        return run_schema(found[0], found[1])

    async def status_of(self, run_id: UUID) -> str | None:
        async with self.alchemy.get_session() as db:
            status: str | None = (
                await db.execute(select(AgentRun.status).where(AgentRun.id == run_id))
            ).scalar_one_or_none()
        return status

    async def last_started_run(self, session_id: UUID) -> UUID | None:
        async with self.alchemy.get_session() as db:
            run_id: UUID | None = (
                await db.execute(
                    select(AgentRun.id)
                    .where(AgentRun.session_id == session_id, AgentRun.started_at.is_not(None))
                    .order_by(AgentRun.started_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        return run_id

    async def list_for_session(
        self, owner_key_id: UUID, session_id: UUID, *, statuses: Sequence[str], limit: int, offset: int
    ) -> RunPage:
        filters: list[Any] = [
            AgentRun.session_id == session_id,
            AgentRun.owner_key_id == owner_key_id,
            AgentRun.deleted_at.is_(None),
        ]
        if statuses:
            filters.append(AgentRun.status.in_(list(statuses)))
        async with self.alchemy.get_session() as db:
            total = (await db.execute(select(func.count()).select_from(AgentRun).where(*filters))).scalar_one()
            rows = (
                await db.execute(
                    select(AgentRun, self._queue_position())
                    .where(*filters)
                    .order_by(AgentRun.created_at.desc(), AgentRun.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
        return RunPage(items=[run_schema(r, pos) for r, pos in rows], total=total, limit=limit, offset=offset)

    # -- starting ------------------------------------------------------------------------------------

    @staticmethod
    async def _session_for_update(
        db: AsyncSession, session_id: UUID, owner_key_id: UUID | None = None
    ) -> AgentSession | None:
        """The session row, locked until the transaction ends; None when it does not exist (or is another
        key's)."""
        stmt = select(AgentSession).where(AgentSession.id == session_id)
        if owner_key_id is not None:
            stmt = stmt.where(AgentSession.owner_key_id == owner_key_id)
        row = (await db.execute(stmt.with_for_update().execution_options(populate_existing=True))).scalar_one_or_none()
        if row is None:
            raise session_not_found(session_id)
        return row

    async def submit(
        self,
        owner_key_id: UUID,
        session_id: UUID | None,
        options: RunOptions,
        *,
        if_busy: IfBusy,
        instance_id: str,
        new_session: AgentSession | None = None,
        before_commit: BeforeCommit,
    ) -> Submitted:
        """Records a run: started at once when the session is free, else per `if_busy` (409 SESSION_BUSY,
        queued, or queued first with the active run to interrupt). With `new_session` (no `session_id`)
        the session is created in the same transaction, so a run that fails to start leaves nothing behind."""
        now = datetime.now(UTC)
        async with self.alchemy.get_session() as db:
            if new_session is not None:
                db.add(new_session)
                await db.flush()
                session = new_session
            else:
                assert session_id is not None
                found = await self._session_for_update(db, session_id, owner_key_id)
                if found is None:
                    raise session_not_found(session_id)
                session = found
            run = AgentRun(
                id=UUID(str(uuid7())),
                created_at=now,
                updated_at=now,
                session_id=session.id,
                owner_key_id=owner_key_id,
                input=msgspec.to_builtins(options),
                if_busy=if_busy,
                queue_rank=0 if if_busy == "interrupt" else 1,
            )
            busy = session.active_run_id is not None or session.queued_runs > 0
            started: StartedRun | None = None
            interrupt: UUID | None = None
            if not busy:
                _mark_running(session, run, options, instance_id, now)
            elif if_busy == "reject":
                raise session_busy(session.id)
            else:
                if session.queued_runs >= MAX_QUEUED_RUNS:
                    raise queue_full(session.id, MAX_QUEUED_RUNS)
                run.status = "queued"
                session.queued_runs += 1
                if if_busy == "interrupt":
                    interrupt = session.active_run_id
            db.add(run)
            await db.flush()
            if not busy:
                started = _started(session, run, options, now)
                await before_commit(started)
            await db.commit()
            position = None
            if run.status == "queued":
                position = (await db.execute(select(self._queue_position()).where(AgentRun.id == run.id))).scalar_one()
        snapshot = to_schema(session)
        await self.cache.put(snapshot, owner_key_id)
        return Submitted(run=run_schema(run, position), session=snapshot, started=started, interrupt=interrupt)

    async def claim_next(self, session_id: UUID, instance_id: str, before_commit: BeforeCommit) -> StartedRun | None:
        """Starts the session's next queued run here, if the session is free; None when there is none (or
        another instance got it first: the session row lock decides)."""
        now = datetime.now(UTC)
        async with self.alchemy.get_session() as db:
            session = await self._session_for_update(db, session_id)
            if session is None or session.active_run_id is not None:
                return None
            run = (
                await db.execute(
                    select(AgentRun)
                    .where(AgentRun.session_id == session_id, AgentRun.status == "queued")
                    .order_by(AgentRun.queue_rank, AgentRun.queue_seq)
                    .limit(1)
                    .with_for_update()
                )
            ).scalar_one_or_none()
            if run is None:
                if session.queued_runs:
                    session.queued_runs = 0  # the count drifted (cannot, but never let it wedge the session)
                    await db.commit()
                return None
            options = msgspec.convert(run.input, RunOptions)
            _mark_running(session, run, options, instance_id, now)
            session.queued_runs = max(0, session.queued_runs - 1)
            await db.flush()
            started = _started(session, run, options, now)
            await before_commit(started)
            await db.commit()
        await self.cache.put(started.session, session.owner_key_id)
        return started

    async def mark_deleted(self, owner_key_id: UUID, run_id: UUID) -> None:
        async with self.alchemy.get_session() as db:
            await db.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.owner_key_id == owner_key_id)
                .values(deleted_at=datetime.now(UTC))
            )
            await db.commit()

    async def run_waiting(self, run_id: UUID) -> None:
        """The run waits for an answer (`run.waiting`); its own transaction, as no run state changes."""
        if self.hook is None:
            return
        async with self.alchemy.get_session() as db:
            run = (await db.execute(select(AgentRun).where(AgentRun.id == run_id))).scalar_one_or_none()
            if run is not None and run.status == "running":
                await tell(self.hook, db, run, "run.waiting")
                await db.commit()

    async def sessions_in_flight(self) -> list[tuple[UUID, UUID | None, str | None, int]]:
        """(session id, active run id, its instance, queued runs) of every session with work in flight."""
        async with self.alchemy.get_session() as db:
            rows = (
                await db.execute(
                    select(
                        AgentSession.id,
                        AgentSession.active_run_id,
                        AgentSession.active_instance_id,
                        AgentSession.queued_runs,
                    ).where(or_(AgentSession.active_run_id.is_not(None), AgentSession.queued_runs > 0))
                )
            ).all()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- ending --------------------------------------------------------------------------------------

    async def finish(
        self,
        run_id: UUID,
        session_id: UUID,
        *,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        totals: RunTotals,
        session_status: str | None = None,
    ) -> bool:
        """Ends a running run and frees its session, in one transaction. False when the run had already
        ended (e.g. reaped while its owner was cut off): then nothing is written."""
        now = datetime.now(UTC)
        ours = AgentSession.active_run_id == run_id
        async with self.alchemy.get_session() as db:
            # One statement moves the run, fenced on its status (a run reaped meanwhile stays as the reaper left
            # it); one more frees the session if this run is still its active one. The run's row lock comes
            # first here, yet no path holds a session's lock while waiting for a running run's: no cycle.
            run = (
                await db.execute(
                    update(AgentRun)
                    .where(AgentRun.id == run_id, AgentRun.status == "running")
                    .values(status=status, ended_at=now, result=result, error=error, updated_at=now)
                    .returning(AgentRun)
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if run is None:
                await db.rollback()
                return False
            changes: dict[str, Any] = {
                "status": case((ours, session_status or status), else_=AgentSession.status),
                "active_run_id": case((ours, None), else_=AgentSession.active_run_id),
                "active_instance_id": case((ours, None), else_=AgentSession.active_instance_id),
                "active_started_at": case((ours, None), else_=AgentSession.active_started_at),
                "total_turns": AgentSession.total_turns + totals.num_turns,
                "total_cost_usd": AgentSession.total_cost_usd + totals.total_cost_usd,
                "input_tokens": AgentSession.input_tokens + totals.input_tokens,
                "output_tokens": AgentSession.output_tokens + totals.output_tokens,
                # The ORM's version counter, kept by hand in this one statement.
                "version": AgentSession.version + 1,
                "updated_at": now,
            }
            if totals.agent_session_id:
                changes["agent_session_id"] = totals.agent_session_id
                changes["agent_fork_from"] = None
            session = (
                await db.execute(
                    update(AgentSession)
                    .where(AgentSession.id == session_id)
                    .values(**changes)
                    .returning(AgentSession)
                    .execution_options(populate_existing=True, synchronize_session=False)
                )
            ).scalar_one_or_none()
            await tell(self.hook, db, run, EVENT_BY_STATUS[status])
            await db.commit()
        if session is not None:
            await self.cache.put(to_schema(session), session.owner_key_id)
        return True

    async def keep_agent_session(self, session_id: UUID, agent_session_id: str) -> None:
        """The backend's own session id, kept as soon as it is known (a crash mid-run can still resume)."""
        async with self.alchemy.get_session() as db:
            session = await self._session_for_update(db, session_id)
            if session is None:
                return
            if session.agent_session_id == agent_session_id and session.agent_fork_from is None:
                return
            session.agent_session_id = agent_session_id
            session.agent_fork_from = None
            await db.commit()
        await self.cache.put(to_schema(session), session.owner_key_id)

    async def cancel_queued_of_session(self, db: AsyncSession, session_id: UUID) -> None:
        """Inside the caller's transaction (deleting the session): its queued runs never start, each told to the
        hook (`run.cancelled`)."""
        now = datetime.now(UTC)
        cancelled = (
            await db.execute(
                update(AgentRun)
                .where(AgentRun.session_id == session_id, AgentRun.status == "queued")
                .values(status="cancelled", ended_at=now, updated_at=now)
                .returning(AgentRun)
            )
        ).scalars()
        for run in list(cancelled):
            await tell(self.hook, db, run, "run.cancelled")

    async def cancel_queued(self, owner_key_id: UUID, run_id: UUID) -> bool:
        """queued → cancelled (it never starts); False when it was no longer queued."""
        now = datetime.now(UTC)
        async with self.alchemy.get_session() as db:
            run = (
                await db.execute(select(AgentRun).where(AgentRun.id == run_id, AgentRun.owner_key_id == owner_key_id))
            ).scalar_one_or_none()
            if run is None:
                raise run_not_found(run_id)
            session = await self._session_for_update(db, run.session_id)
            moved = await db.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.status == "queued")
                .values(status="cancelled", ended_at=now, updated_at=now)
            )
            if moved.rowcount == 0:  # type: ignore[attr-defined]
                await db.rollback()
                return False
            if session is not None:
                session.queued_runs = max(0, session.queued_runs - 1)
            await db.refresh(run)
            await tell(self.hook, db, run, "run.cancelled")
            await db.commit()
        if session is not None:
            await self.cache.put(to_schema(session), session.owner_key_id)
        return True


def is_ended(status: str | None) -> bool:
    return status in ENDED_STATUSES
