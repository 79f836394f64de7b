"""`SessionReader`: the one cached read of a session. Cache first; a database session is opened only on a
miss, so a cache hit costs one Valkey GET and nothing else."""

from __future__ import annotations

from uuid import UUID

from app.domain.sessions.cache import MISS, SessionCache
from app.domain.sessions.errors import session_not_found
from app.domain.sessions.schemas import Session
from app.domain.sessions.services import SessionServiceFactory


class SessionReader:
    def __init__(self, cache: SessionCache, services: SessionServiceFactory) -> None:
        self.cache = cache
        self.services = services

    async def get(self, session_id: UUID, owner_key_id: UUID) -> Session:
        cached = await self.cache.get(session_id, owner_key_id)
        if cached is None:
            raise session_not_found(session_id)
        if isinstance(cached, Session):
            return cached
        assert cached is MISS
        async with self.services.new() as service:
            return await service.load_and_cache(session_id, owner_key_id)
