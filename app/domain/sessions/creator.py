"""`SessionCreator`: `POST /sessions`, one app-level object (like `SessionReader`). A create takes no lock and
reads nothing, so it needs no request-scoped database session or `SessionService`: resolving those per request,
and running the INSERT through SQLAlchemy's session and execution, cost more CPU than the INSERT itself."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

from app.db.driver import pooled_driver
from app.db.models import AgentSession
from app.db.new_rows import NewRows
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.schemas import Session, SessionCreate
from app.domain.sessions.services import SessionRow, SessionRuns, check_session_settings, to_schema

_NEW_SESSION = NewRows(AgentSession)


class SessionCreator:
    def __init__(self, alchemy: SQLAlchemyAsyncConfig, cache: SessionCache, runs: SessionRuns) -> None:
        self.alchemy = alchemy
        self.cache = cache
        self.runs = runs

    async def create(self, owner_key_id: UUID, data: SessionCreate) -> Session:
        check_session_settings(self.runs, data.model, data.permission_mode)
        # Every value is made here (the model's own defaults for the rest), so nothing is read back.
        values = _NEW_SESSION.values(
            {
                "owner_key_id": owner_key_id,
                "title": data.title,
                "model": data.model,
                "permission_mode": data.permission_mode,
                "tags": list(data.tags),
                "meta": dict(data.metadata),
            }
        )
        engine = self.alchemy.get_engine()
        # One INSERT is atomic on its own: outside a transaction it is one round trip instead of three.
        async with pooled_driver(engine) as driver:
            await _NEW_SESSION.insert_on(driver, engine.dialect, values)
        session = to_schema(cast("SessionRow", SimpleNamespace(**values)))
        await self.cache.put(session, owner_key_id)
        return session
