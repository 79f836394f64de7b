"""`SessionReader`: the one cached read of a session. Cache first; a database session is opened only on a
miss, so a cache hit costs one Valkey GET and nothing else."""

from __future__ import annotations

from uuid import UUID

from app.domain.sessions.cache import MISS, SessionCache
from app.domain.sessions.errors import session_not_found
from app.domain.sessions.read_shortcut import CacheLookup
from app.domain.sessions.schemas import Session
from app.domain.sessions.services import SessionServiceFactory


class SessionReader:
    def __init__(self, cache: SessionCache, services: SessionServiceFactory) -> None:
        self.cache = cache
        self.services = services

    async def get(self, session_id: UUID, owner_key_id: UUID, looked_up: CacheLookup | None = None) -> Session:
        """`looked_up`: what the cache already answered for this request (app.domain.sessions.read_shortcut)."""
        if looked_up is not None and (looked_up.session_id, looked_up.owner_key_id) == (session_id, owner_key_id):
            cached = looked_up.outcome
        else:
            cached = await self.cache.get(session_id, owner_key_id)
        if cached is None:
            raise session_not_found(session_id)
        if isinstance(cached, Session):
            return cached
        assert cached is MISS
        async with self.services.new() as service:
            return await service.load_and_cache(session_id, owner_key_id)
