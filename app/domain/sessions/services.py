"""Session use cases: Postgres (Advanced-Alchemy) is the truth, `SessionCache` sits in front of reads,
`DistributedLock` serialises writers and the ORM version counter fences them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from msgspec import UNSET
from sqlalchemy import delete, func, insert, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from app.agents.base import AgentRequestError
from app.db.models import AgentSession, AgentTranscriptEntry, SessionEvent, TranscriptEntry
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.errors import (
    busy_for_delete,
    changed_concurrently,
    if_match_mismatch,
    invalid_session_settings,
    kept_changing,
    session_locked,
    session_not_found,
)
from app.domain.sessions.schemas import (
    ActiveRun,
    MessagePage,
    Session,
    SessionMessage,
    SessionPage,
    SessionUpdate,
    Usage,
)
from app.domain.sessions.valkey_keys import lock_key
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.lock import DistributedLock, LockTimeoutError

MAX_FENCED_RETRIES = 3


class SessionRuns(Protocol):
    """What a session's use cases need of its runs (the runs domain's `RunManager` is the one implementation)."""

    def check_session_settings(self, model: str | None, permission_mode: str | None) -> None:
        """Raises `AgentRequestError` when runs would refuse these session settings."""

    async def set_permission_mode(self, session_id: UUID, run_id: UUID, instance_id: str, mode: str) -> None:
        """Applies a new permission mode to the live run on `instance_id`, its owner (best effort)."""

    async def cancel_queued_of_session(self, db: AsyncSession, session_id: UUID) -> None:
        """Inside the caller's transaction: the session's queued runs never start."""

    async def forget_events(self, session_id: UUID) -> None:
        """The session's live event stream goes (best effort: it expires on its own)."""


class SessionRow(Protocol):
    """What `to_schema` reads: an `AgentSession`, or a new row's attributes as they were inserted."""

    @property
    def id(self) -> UUID: ...
    @property
    def title(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def permission_mode(self) -> str | None: ...
    @property
    def parent_session_id(self) -> UUID | None: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def total_turns(self) -> int: ...
    @property
    def total_cost_usd(self) -> float: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def last_run_at(self) -> datetime | None: ...
    @property
    def active_run_id(self) -> UUID | None: ...
    @property
    def active_instance_id(self) -> str | None: ...
    @property
    def active_started_at(self) -> datetime | None: ...
    @property
    def queued_runs(self) -> int: ...


def to_schema(row: SessionRow) -> Session:
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


def check_session_settings(runs: SessionRuns, model: str | None, permission_mode: str | None) -> None:
    """A session never stores settings its runs would refuse."""
    try:
        runs.check_session_settings(model, permission_mode)
    except AgentRequestError as exc:
        raise invalid_session_settings(str(exc)) from exc


class SessionService(SQLAlchemyAsyncRepositoryService[AgentSession]):
    class Repository(SQLAlchemyAsyncRepository[AgentSession]):
        model_type = AgentSession

    repository_type = Repository

    def __init__(
        self, session: AsyncSession, *, cache: SessionCache, lock: DistributedLock, runs: SessionRuns, **kwargs: Any
    ) -> None:
        super().__init__(session=session, **kwargs)
        self.cache = cache
        self.lock = lock
        self.runs = runs

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

    async def load_and_cache(self, session_id: UUID, owner_key_id: UUID, *, recache: bool = True) -> Session:
        """A cache miss: read Postgres and re-cache (set-if-newer, so a racing writer always wins). Not
        `recache` when the cache read failed because Valkey did not answer: the write would wait for it too."""
        session = to_schema(await self.load_owned(session_id, owner_key_id))
        if recache:
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
        await self.load_owned(session_id, owner_key_id)  # 404 unless it is the caller's
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
                raise session_locked() from exc
            except VALKEY_ERRORS:
                token = None
            try:
                row = await self.load_owned(session_id, owner_key_id, for_update=True)
                if expected_versions is not None and row.version not in expected_versions:
                    raise if_match_mismatch(expected_versions, row.version)
                result = mutate(row)
                if result is not None:
                    await result
                try:
                    await self.repository.session.commit()
                except StaleDataError:
                    await self.repository.session.rollback()
                    if expected_versions is not None:
                        raise changed_concurrently() from None
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
        raise kept_changing()

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
        check_session_settings(self.runs, model, permission_mode)

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
            # The instance running the agent applies it live (the message goes to that instance's control stream).
            active = session.active_run
            await self.runs.set_permission_mode(session_id, active.run_id, active.instance_id, data.permission_mode)
        return session

    async def delete_session(self, session_id: UUID, owner_key_id: UUID) -> None:
        # Postgres says whether a run is active (runs start fenced on this row), so the row lock decides.
        row = await self.load_owned(session_id, owner_key_id, for_update=True)
        if row.active_run_id is not None:
            raise busy_for_delete()
        db = self.repository.session
        await self.runs.cancel_queued_of_session(db, session_id)
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
        await self.runs.forget_events(session_id)

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


@dataclass(frozen=True)
class SessionServiceFactory:
    """The one place a `SessionService` is made: each gets its collaborators at construction."""

    alchemy: SQLAlchemyAsyncConfig
    cache: SessionCache
    lock: DistributedLock
    runs: SessionRuns

    def __call__(self, db: AsyncSession) -> SessionService:
        return SessionService(session=db, cache=self.cache, lock=self.lock, runs=self.runs)

    @contextlib.asynccontextmanager
    async def new(self) -> AsyncIterator[SessionService]:
        """A service on a database session of its own (outside a request)."""
        async with self.alchemy.get_session() as db:
            yield self(db)
