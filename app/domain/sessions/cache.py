"""`SessionCache`: `agentapi:{<sid>}:session`, cache-aside, never older than Postgres's newest version."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

import msgspec

from app.domain.sessions.schemas import CachedSession, CachedSessionHeader, Session
from app.domain.sessions.valkey_keys import session_key
from app.lib import metrics
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.versioned_cache import VersionedCache

logger = logging.getLogger(__name__)

_header_decoder = msgspec.json.Decoder(CachedSessionHeader)
_session_decoder = msgspec.json.Decoder(Session)
_encoder = msgspec.json.Encoder()
# The counter's children, made once: `labels()` on every read cost ~2 % of a cached GET.
_HIT, _MISS, _FALLBACK = (metrics.cache_requests.labels(result) for result in ("hit", "miss", "fallback"))


class CacheMiss:
    """A miss, as opposed to a tombstone (a deleted session)."""


MISS = CacheMiss()
UNREACHABLE = CacheMiss()
"""A miss because Valkey did not answer: re-caching what Postgres gives would wait for it a second time."""


MissedWrite = Callable[[UUID], Awaitable[None]]


class SessionCache:
    """Reads and writes never fail a request: Valkey trouble counts as a miss (or a skipped write).

    A write that could not update the cache (Valkey unreachable from this instance) is remembered twice: here,
    so this instance drops the entry as soon as its Valkey answers again, and durably through `on_missed_write`
    (Postgres, see app.domain.sessions.invalidations), so any instance that reaches Valkey refreshes the entry
    within seconds; the others would otherwise serve the old version until the TTL (2 h)."""

    def __init__(self, cache: VersionedCache, on_missed_write: MissedWrite | None = None) -> None:
        self._cache = cache
        self._on_missed_write = on_missed_write
        # Sessions whose cache entry we could not update after a committed write (Valkey down). Valkey may
        # come back with its old data (e.g. restored from a snapshot), so those entries are dropped as soon
        # as it answers again, and this instance never trusts them meanwhile.
        self._unsynced: set[UUID] = set()

    async def _resync(self) -> None:
        while self._unsynced:
            session_id = next(iter(self._unsynced))
            await self._cache.invalidate(session_key(session_id))
            self._unsynced.discard(session_id)

    async def _missed(self, session_id: UUID, *, durable: bool) -> None:
        if len(self._unsynced) < 100_000:
            self._unsynced.add(session_id)
        if durable and self._on_missed_write is not None:
            await self._on_missed_write(session_id)

    async def get(self, session_id: UUID, owner_key_id: UUID) -> Session | CacheMiss | None:
        """The session, None if it is known deleted or belongs to another key, MISS, or UNREACHABLE (Valkey)."""
        try:
            if self._unsynced:
                await self._resync()
            raw = await self._cache.get(session_key(session_id))
        except VALKEY_ERRORS:
            _FALLBACK.inc()
            metrics.backend_errors.labels("valkey").inc()
            return UNREACHABLE
        if raw is None:
            _MISS.inc()
            return MISS
        _HIT.inc()
        try:
            header = _header_decoder.decode(raw)
            if header.deleted:
                return None
            if header.owner_key_id != owner_key_id:
                return None
            return _session_decoder.decode(raw)
        except msgspec.DecodeError:
            return MISS

    async def put(self, session: Session, owner_key_id: UUID, *, after_write: bool = True) -> None:
        """Caches `session` (set-if-newer). `after_write=False` for a read re-caching what it loaded: if that
        fails nothing is stale, so nothing is recorded."""
        try:
            if self._unsynced:
                await self._resync()
            await self.refresh(session, owner_key_id)
        except VALKEY_ERRORS:
            logger.warning("session cache write skipped: Valkey unavailable")
            await self._missed(session.id, durable=after_write)

    async def refresh(self, session: Session, owner_key_id: UUID) -> None:
        """Set-if-newer, raising Valkey's errors (for callers that handle them)."""
        entry = CachedSession(**{f: getattr(session, f) for f in session.__struct_fields__}, owner_key_id=owner_key_id)
        await self._cache.set_if_newer(session_key(session.id), session.version, _encoder.encode(entry))

    async def tombstone(self, session_id: UUID) -> None:
        try:
            await self.tombstone_or_raise(session_id)
        except VALKEY_ERRORS:
            logger.warning("session cache tombstone skipped: Valkey unavailable")
            await self._missed(session_id, durable=True)

    async def tombstone_or_raise(self, session_id: UUID) -> None:
        await self._cache.tombstone(session_key(session_id))

    async def ping(self) -> None:
        """Raises Valkey's errors when it cannot be reached."""
        await self._cache.ping()
