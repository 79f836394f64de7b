"""Session use cases: Postgres (Advanced-Alchemy) is the truth, `SessionCache` sits in front of reads,
`DistributedLock` serialises writers and the ORM version counter fences them."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from msgspec import UNSET
from sqlalchemy import delete, func, insert, literal, or_, select, update
from sqlalchemy.orm.exc import StaleDataError

from app.agents.base import AgentRequestError
from app.db.models import AgentRun, AgentSession, AgentTranscriptEntry, SessionEvent, TranscriptEntry
from app.domain.runs import control
from app.domain.sessions.cache import MISS, SessionCache
from app.domain.sessions.keys import events_key, interrupt_key, lock_key
from app.domain.sessions.schemas import (
    ActiveRun,
    MessagePage,
    Session,
    SessionCreate,
    SessionMessage,
    SessionPage,
    SessionUpdate,
    Usage,
)
from app.lib.problems import ApiError
from app.lib.valkey.control import ControlChannel, SignalMarker
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import EventLog
from app.lib.valkey.lease import RunLease
from app.lib.valkey.lock import DistributedLock, LockTimeoutError

MAX_FENCED_RETRIES = 3


@dataclass(frozen=True)
class SessionInfra:
    """The Valkey-side collaborators of session use cases, built once per app."""

    cache: SessionCache
    lock: DistributedLock
    lease: RunLease
    events: EventLog
    control: ControlChannel
    markers: SignalMarker
    # The agent backend's check of a session's model and permission mode (raises `AgentRequestError`): a
    # session never stores settings its runs would refuse. The default accepts everything.
    check_agent_settings: Callable[[str | None, str | None], None] = lambda _model, _mode: None
    # Told of runs cancelled with their session (see `RunStore`'s hook); None: nobody listens.
    run_event_hook: Any = None


def check_agent_settings(infra: SessionInfra, model: str | None, permission_mode: str | None) -> None:
    try:
        infra.check_agent_settings(model, permission_mode)
    except AgentRequestError as exc:
        raise ApiError(422, "VALIDATION_ERROR", str(exc), title="Invalid session settings") from exc


def session_not_found(session_id: UUID) -> ApiError:
    return ApiError(404, "SESSION_NOT_FOUND", f"Session {session_id} does not exist.", title="Session not found")


def to_schema(row: AgentSession) -> Session:
    active = (
        ActiveRun(run_id=row.active_run_id, instance_id=row.active_instance_id or "", started_at=row.active_started_at)
        if row.active_run_id is not None and row.active_started_at is not None
        else None
    )
    return Session(
        id=row.id,
        title=row.title,
        status=row.status,  # type: ignore[arg-type]
        model=row.model,
        permission_mode=row.permission_mode,
        parent_session_id=row.parent_session_id,
        tags=list(row.tags or []),
        metadata=dict(row.meta or {}),
        total_turns=row.total_turns,
        total_cost_usd=row.total_cost_usd,
        usage=Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_run_at=row.last_run_at,
        active_run=active,
        queued_runs=row.queued_runs or 0,
    )


async def cancel_queued_runs(db: Any, session_id: UUID, hook: Any = None) -> None:
    """Inside the caller's transaction (deleting the session): its queued runs never start. `hook` is the
    runs' event hook (`run.cancelled` for each)."""
    now = datetime.now(UTC)
    cancelled = (
        await db.execute(
            update(AgentRun)
            .where(AgentRun.session_id == session_id, AgentRun.status == "queued")
            .values(status="cancelled", ended_at=now, updated_at=now)
            .returning(AgentRun)
        )
    ).scalars()
    if hook is not None:
        for run in list(cancelled):
            await hook(db, run, "run.cancelled")


class SessionService(SQLAlchemyAsyncRepositoryService[AgentSession]):
    class Repository(SQLAlchemyAsyncRepository[AgentSession]):
        model_type = AgentSession

    repository_type = Repository

    infra: SessionInfra
    cache: SessionCache
    lock: DistributedLock

    def bind(self, infra: SessionInfra) -> SessionService:
        self.infra = infra
        self.cache = infra.cache
        self.lock = infra.lock
        return self

    # -- reads -------------------------------------------------------------------------------------

    async def load_owned(
        self, session_id: UUID, owner_key_id: UUID, *, fresh: bool = False, for_update: bool = False
    ) -> AgentSession:
        """The row from Postgres, or 404 when missing or owned by another key (never 403: no leak).

        `for_update` also takes the row lock until the transaction ends (`SELECT ... FOR UPDATE`)."""
        stmt = select(AgentSession).where(AgentSession.id == session_id, AgentSession.owner_key_id == owner_key_id)
        if fresh or for_update:
            stmt = stmt.execution_options(populate_existing=True)
        if for_update:
            stmt = stmt.with_for_update()
        row: AgentSession | None = (await self.repository.session.execute(stmt)).scalar_one_or_none()
        if row is None:
            raise session_not_found(session_id)
        return row

    async def get_session(self, session_id: UUID, owner_key_id: UUID) -> Session:
        cached = await self.cache.get(session_id, owner_key_id)
        if cached is None:
            raise session_not_found(session_id)
        if cached is not MISS:
            assert isinstance(cached, Session)
            return cached
        return await self.load_and_cache(session_id, owner_key_id)

    async def load_and_cache(self, session_id: UUID, owner_key_id: UUID) -> Session:
        """A cache miss: read Postgres and re-cache (set-if-newer, so a racing writer always wins)."""
        session = to_schema(await self.load_owned(session_id, owner_key_id))
        await self.cache.put(session, owner_key_id, after_write=False)
        return session

    async def list_sessions(
        self, owner_key_id: UUID, *, statuses: Sequence[str], tags: Sequence[str], limit: int, offset: int
    ) -> SessionPage:
        """Newest first; in any of `statuses` (all when empty), carrying every one of `tags`."""
        filters: list[Any] = [AgentSession.owner_key_id == owner_key_id]
        if statuses:
            filters.append(AgentSession.status.in_(list(statuses)))
        if tags:
            filters.append(AgentSession.tags.contains(list(tags)))
        # Two queries, not a window count: a page past the end must still report the real total.
        rows, total = await self.get_many_and_count(
            *filters,
            LimitOffset(limit=limit, offset=offset),
            order_by=[(AgentSession.created_at, True), (AgentSession.id, True)],
            count_with_window_function=False,
        )
        return SessionPage(items=[to_schema(r) for r in rows], total=total, limit=limit, offset=offset)

    async def list_messages(self, session_id: UUID, owner_key_id: UUID, *, limit: int, offset: int) -> MessagePage:
        await self.get_session(session_id, owner_key_id)
        db = self.repository.session
        total = (
            await db.execute(
                select(func.count()).select_from(SessionEvent).where(SessionEvent.session_id == session_id)
            )
        ).scalar_one()
        rows = (
            await db.execute(
                select(SessionEvent)
                .where(SessionEvent.session_id == session_id)
                .order_by(SessionEvent.stream_ms, SessionEvent.stream_seq)
                .limit(limit)
                .offset(offset)
            )
        ).scalars()
        items = [
            SessionMessage(id=r.stream_id, run_id=r.run_id, event=r.event, data=r.data, created_at=r.created_at)
            for r in rows
        ]
        return MessagePage(items=items, total=total, limit=limit, offset=offset)

    # -- writes ------------------------------------------------------------------------------------

    async def create_session(self, owner_key_id: UUID, data: SessionCreate) -> Session:
        check_agent_settings(self.infra, data.model, data.permission_mode)
        db = self.repository.session
        if not db.in_transaction():
            # One INSERT is atomic on its own: without BEGIN and COMMIT it is one round trip instead of three.
            await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        row = await self.create(
            AgentSession(
                owner_key_id=owner_key_id,
                title=data.title,
                model=data.model,
                permission_mode=data.permission_mode,
                tags=list(data.tags),
                meta=dict(data.metadata),
            ),
            auto_commit=True,
            # Every column has a client-side default: nothing to read back (no refresh SELECT, no second checkout).
            auto_refresh=False,
        )
        session = to_schema(row)
        await self.cache.put(session, owner_key_id)
        return session

    async def update_fenced(
        self,
        session_id: UUID,
        owner_key_id: UUID,
        mutate: Callable[[AgentSession], Awaitable[None] | None],
        *,
        expected_versions: frozenset[int] | None = None,
    ) -> Session:
        """Read-modify-write under the session lock, fenced by the version column.

        The lock keeps writers from colliding; the fence makes a writer whose lock expired fail instead of
        overwriting a newer version (it then retries on the fresh row, or answers 412 with If-Match).
        `expected_versions` are the versions an If-Match accepts (None: any).
        The row is read `FOR UPDATE`, so writers that overlap anyway (Valkey down, or a lock that expired)
        queue in Postgres and each applies its change to the newest version instead of failing a race."""
        for _attempt in range(MAX_FENCED_RETRIES):
            token: str | None = None
            key = lock_key(session_id)
            try:
                token = await self.lock.acquire(key)
            except LockTimeoutError as exc:
                raise ApiError(
                    409,
                    "SESSION_LOCKED",
                    "The session is locked by another writer; try again.",
                    headers={"Retry-After": "1"},
                ) from exc
            except VALKEY_ERRORS:
                token = None
            try:
                row = await self.load_owned(session_id, owner_key_id, for_update=True)
                if expected_versions is not None and row.version not in expected_versions:
                    sent = ", ".join(f'"{v}"' for v in sorted(expected_versions)) or "(no session version)"
                    raise ApiError(
                        412,
                        "VERSION_CONFLICT",
                        f'If-Match {sent} does not match the current version "{row.version}".',
                        title="Version conflict",
                    )
                result = mutate(row)
                if result is not None:
                    await result
                try:
                    await self.repository.session.commit()
                except StaleDataError:
                    await self.repository.session.rollback()
                    if expected_versions is not None:
                        raise ApiError(
                            412, "VERSION_CONFLICT", "The session changed concurrently.", title="Version conflict"
                        ) from None
                    continue
                # The next writer may go as soon as this version is committed: the cache write is set-if-newer,
                # so it cannot overwrite that writer's newer version, and it need not hold the lock.
                with contextlib.suppress(*VALKEY_ERRORS):
                    if token is not None:
                        await self.lock.release(key, token)
                token = None
                session = to_schema(row)
                await self.cache.put(session, owner_key_id)
                return session
            finally:
                if token is not None:
                    with contextlib.suppress(*VALKEY_ERRORS):
                        await self.lock.release(key, token)
        raise ApiError(
            409, "VERSION_CONFLICT", "The session kept changing concurrently; try again.", title="Version conflict"
        )

    async def update_session(
        self,
        session_id: UUID,
        owner_key_id: UUID,
        data: SessionUpdate,
        *,
        expected_versions: frozenset[int] | None,
    ) -> Session:
        model = data.model if data.model is not UNSET else None
        permission_mode = data.permission_mode if data.permission_mode is not UNSET else None
        check_agent_settings(self.infra, model, permission_mode)

        def mutate(row: AgentSession) -> None:
            if data.title is not UNSET:
                row.title = data.title
            if data.tags is not UNSET:
                row.tags = list(data.tags)
            if data.metadata is not UNSET:
                row.meta = dict(data.metadata)
            if data.model is not UNSET:
                row.model = data.model
            if data.permission_mode is not UNSET:
                row.permission_mode = data.permission_mode

        session = await self.update_fenced(session_id, owner_key_id, mutate, expected_versions=expected_versions)
        if data.permission_mode is not UNSET and data.permission_mode and session.active_run is not None:
            # The instance running the agent applies it live (its run manager handles the message).
            message = control.SetPermissionMode(
                session_id=session_id, run_id=session.active_run.run_id, permission_mode=data.permission_mode
            )
            with contextlib.suppress(*VALKEY_ERRORS):
                await self.infra.control.publish(control.encode(message))
        return session

    async def delete_session(self, session_id: UUID, owner_key_id: UUID) -> None:
        # Postgres says whether a run is active (runs start fenced on this row), so the row lock decides.
        row = await self.load_owned(session_id, owner_key_id, for_update=True)
        if row.active_run_id is not None:
            raise ApiError(
                409, "SESSION_BUSY", "The session has an active run; interrupt it first.", title="Session busy"
            )
        db = self.repository.session
        await cancel_queued_runs(db, session_id, self.infra.run_event_hook)
        await db.execute(delete(AgentSession).where(AgentSession.id == session_id))
        # The agent transcripts this session used go too: its own, and the one it was forked from (kept when its
        # parent was deleted first, for this fork's first run) — each unless another session still needs it.
        for agent_session_id in {row.agent_session_id, row.agent_fork_from} - {None}:
            still_needed = select(AgentSession.id).where(
                or_(
                    AgentSession.agent_session_id == agent_session_id,
                    AgentSession.agent_fork_from == agent_session_id,
                )
            )
            await db.execute(
                delete(AgentTranscriptEntry).where(
                    AgentTranscriptEntry.session_id == agent_session_id, ~still_needed.exists()
                )
            )
        await db.commit()
        await self.cache.tombstone(session_id)
        # The stream expires on its own if this fails; the session row is gone, so nothing serves it.
        with contextlib.suppress(*VALKEY_ERRORS):
            await self.infra.events.delete(events_key(session_id), interrupt_key(session_id))

    async def fork_session(self, session_id: UUID, owner_key_id: UUID, title: str | None) -> Session:
        parent = await self.load_owned(session_id, owner_key_id)
        db = self.repository.session
        child = AgentSession(
            owner_key_id=owner_key_id,
            title=title if title is not None else parent.title,
            model=parent.model,
            permission_mode=parent.permission_mode,
            parent_session_id=parent.id,
            tags=list(parent.tags or []),
            meta=dict(parent.meta or {}),
            # The child's first run forks the parent's agent conversation into one of its own (the agent's
            # transcript is shared until then, not copied).
            agent_session_id=None,
            agent_fork_from=parent.agent_session_id or parent.agent_fork_from,
        )
        db.add(child)
        await db.flush()
        # The transcript travels with the fork: persisted events and the agent's own transcript entries.
        await db.execute(
            insert(SessionEvent).from_select(
                ["session_id", "run_id", "stream_ms", "stream_seq", "event", "data", "created_at", "updated_at"],
                select(
                    literal(child.id, SessionEvent.session_id.type),
                    SessionEvent.run_id,
                    SessionEvent.stream_ms,
                    SessionEvent.stream_seq,
                    SessionEvent.event,
                    SessionEvent.data,
                    SessionEvent.created_at,
                    SessionEvent.updated_at,
                ).where(SessionEvent.session_id == parent.id),
            )
        )
        await db.execute(
            insert(TranscriptEntry).from_select(
                ["session_id", "subpath", "entry", "created_at", "updated_at"],
                select(
                    literal(child.id, TranscriptEntry.session_id.type),
                    TranscriptEntry.subpath,
                    TranscriptEntry.entry,
                    TranscriptEntry.created_at,
                    TranscriptEntry.updated_at,
                )
                .where(TranscriptEntry.session_id == parent.id)
                .order_by(TranscriptEntry.id),
            )
        )
        await db.commit()
        session = to_schema(child)
        await self.cache.put(session, owner_key_id)
        return session
