"""`SessionReader`: the hot read path. Cache first; a database session is opened only on a miss, so a
cache hit costs one Valkey GET and nothing else."""

from __future__ import annotations

from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

from app.domain.sessions.cache import MISS
from app.domain.sessions.schemas import Session
from app.domain.sessions.services import SessionInfra, SessionService, session_not_found


class SessionReader:
    def __init__(self, infra: SessionInfra, alchemy: SQLAlchemyAsyncConfig) -> None:
        self.infra = infra
        self.alchemy = alchemy

    async def get(self, session_id: UUID, owner_key_id: UUID) -> Session:
        cached = await self.infra.cache.get(session_id, owner_key_id)
        if cached is None:
            raise session_not_found(session_id)
        if isinstance(cached, Session):
            return cached
        assert cached is MISS
        async with self.alchemy.get_session() as db:
            return await SessionService(session=db).bind(self.infra).load_and_cache(session_id, owner_key_id)
