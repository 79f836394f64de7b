"""`SessionCache`: `agentapi:{<sid>}:session`, cache-aside, never older than Postgres's newest version."""

from __future__ import annotations

import logging
from uuid import UUID

import msgspec

from app.domain.sessions.keys import session_key
from app.domain.sessions.schemas import CachedSession, CachedSessionHeader, Session
from app.lib import metrics
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.versioned_cache import VersionedCache

logger = logging.getLogger(__name__)

_header_decoder = msgspec.json.Decoder(CachedSessionHeader)
_session_decoder = msgspec.json.Decoder(Session)
_encoder = msgspec.json.Encoder()


class CacheMiss:
    """A miss, as opposed to a tombstone (a deleted session)."""


MISS = CacheMiss()


class SessionCache:
    """Reads and writes never fail a request: Valkey trouble counts as a miss (or a skipped write)."""

    def __init__(self, cache: VersionedCache) -> None:
        self._cache = cache
        # Sessions whose cache entry we could not update after a committed write (Valkey down). Valkey may
        # come back with its old data (e.g. restored from a snapshot), so those entries are dropped as soon
        # as it answers again, and this instance never trusts them meanwhile.
        self._unsynced: set[UUID] = set()

    async def _resync(self) -> None:
        while self._unsynced:
            session_id = next(iter(self._unsynced))
            await self._cache.invalidate(session_key(session_id))
            self._unsynced.discard(session_id)

    def _mark_unsynced(self, session_id: UUID) -> None:
        if len(self._unsynced) < 100_000:
            self._unsynced.add(session_id)

    async def get(self, session_id: UUID, owner_key_id: UUID) -> Session | CacheMiss | None:
        """The session, None if it is known deleted or belongs to another key, or MISS."""
        try:
            if self._unsynced:
                await self._resync()
            raw = await self._cache.get(session_key(session_id))
        except VALKEY_ERRORS:
            metrics.cache_requests.labels("fallback").inc()
            metrics.backend_errors.labels("valkey").inc()
            return MISS
        if raw is None:
            metrics.cache_requests.labels("miss").inc()
            return MISS
        metrics.cache_requests.labels("hit").inc()
        try:
            header = _header_decoder.decode(raw)
            if header.deleted:
                return None
            if header.owner_key_id != owner_key_id:
                return None
            return _session_decoder.decode(raw)
        except msgspec.DecodeError:
            return MISS

    async def put(self, session: Session, owner_key_id: UUID) -> None:
        entry = CachedSession(**{f: getattr(session, f) for f in session.__struct_fields__}, owner_key_id=owner_key_id)
        try:
            if self._unsynced:
                await self._resync()
            await self._cache.set_if_newer(session_key(session.id), session.version, _encoder.encode(entry))
        except VALKEY_ERRORS:
            self._mark_unsynced(session.id)
            logger.warning("session cache write skipped: Valkey unavailable")

    async def invalidate(self, session_id: UUID) -> None:
        try:
            await self._cache.invalidate(session_key(session_id))
        except VALKEY_ERRORS:
            self._mark_unsynced(session_id)
            logger.warning("session cache invalidation skipped: Valkey unavailable")

    async def tombstone(self, session_id: UUID) -> None:
        try:
            await self._cache.tombstone(session_key(session_id))
        except VALKEY_ERRORS:
            self._mark_unsynced(session_id)
            logger.warning("session cache tombstone skipped: Valkey unavailable")
