"""API-key authentication: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

Keys are looked up by hash and the answer is kept in process: a found key for `AUTH_CACHE_TTL` seconds
(default 30), an unknown one for `AUTH_NEGATIVE_CACHE_TTL` (default 30, never more than 60), so a revoked key
stops working, and a new key starts working, on every instance within a minute while the hot path stays off
the database. Both caches are bounded (10,000 valid keys, `AUTH_NEGATIVE_CACHE_SIZE` unknown ones; least
recently used out first) and separate, so unknown keys can never push a valid key out.

Failed authentications are cheap and bounded (see `AuthFailureLimiter`): a malformed key (not 1-256 visible
ASCII characters) or a known-unknown one never reaches the database, and a client address gets at most
`AUTH_FAILURES_PER_MINUTE` lookups of unknown keys per minute across all instances, then 429 `RATE_LIMITED`.
A key this instance verified in the last `AUTH_CACHE_TTL` + 10 minutes is never refused by that limit: it is
re-checked in the database when its entry is stale, but outside the limit (it cannot be a guess), so clients
behind one NAT address keep working while another of them floods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, NoReturn

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from app.db.models import ApiKey
from app.domain.keys.hashing import hash_key
from app.domain.keys.principal import Principal
from app.domain.keys.rate_limit import AuthFailureLimiter, too_many_failures
from app.domain.keys.services import ApiKeyService
from app.lib import metrics
from app.lib.lru import BoundedTTLCache

__all__ = (
    "ApiKeyAuthMiddleware",
    "ApiKeyAuthenticator",
    "Principal",
    "extract_key",
    "is_well_formed",
    "key_from_headers",
)

MAX_KEY_LENGTH = 256
# Lookups of keys not in the cache at once per worker: a burst of unknown keys holds at most this many pool
# connections (and opens no more), whatever else needs the database meanwhile.
MAX_CONCURRENT_LOOKUPS = 4
# How long after its cache entry went stale a verified key is still re-checked outside the failure limit.
STALE_FOR = 600.0
# A new key must work everywhere within the documented minute, whatever AUTH_NEGATIVE_CACHE_TTL says.
MAX_NEGATIVE_TTL = 60.0
# The counter's children, made once: `labels()` costs more than the rest of a refused request.
FAILURES = {outcome: metrics.auth_failures.labels(outcome) for outcome in ("unknown", "cached", "malformed", "limited")}
INVALID = "Invalid or revoked API key."
MALFORMED = "Malformed API key: 1-256 visible ASCII characters expected."


def is_well_formed(key: str) -> bool:
    """1-256 visible ASCII characters: no space, control or non-ASCII character (header bytes decode as latin-1)."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable() and " " not in key


class ApiKeyAuthenticator:
    def __init__(
        self,
        alchemy: SQLAlchemyAsyncConfig,
        ttl: float,
        *,
        failures: AuthFailureLimiter | None = None,
        negative_ttl: float = 30.0,
        negative_size: int = 10_000,
        size: int = 10_000,
    ) -> None:
        self._alchemy = alchemy
        self._ttl = ttl
        self.failures = failures
        # A verified key: (principal, when it was verified). Fresh for `ttl`; kept for `STALE_FOR` more, so that
        # re-checking a key that was valid is never refused by the failure limit (a client behind an address
        # that is flooding keeps working), while a revoked key still stops working after `ttl`.
        self._cache: BoundedTTLCache[str, tuple[Principal, float]] = BoundedTTLCache(max(1, size), ttl + STALE_FOR)
        self._unknown: BoundedTTLCache[str, bool] = BoundedTTLCache(
            max(1, negative_size), max(0.0, min(negative_ttl, MAX_NEGATIVE_TTL))
        )
        self._lookups = asyncio.Semaphore(MAX_CONCURRENT_LOOKUPS)

    async def authenticate(self, key: str, client: str | None = None) -> Principal:
        """The key's principal; raises 401 `NotAuthorizedException`, or 429 `ApiError` when `client` (the
        request's address) is over its failed-authentication limit."""
        if not is_well_formed(key):
            await self._refuse(client, "malformed", MALFORMED)
        key_hash = hash_key(key)
        cached = self._cache.get(key_hash)
        if cached is not None:
            if time.monotonic() - cached[1] < self._ttl:
                return cached[0]
            # Valid when last checked: look it up again, outside the failure limit (it cannot be a guess).
            row = await self._lookup(key_hash)
            if row is not None:
                return self._verified(key_hash, row)
            self._cache.pop(key_hash)
            self._unknown.set(key_hash, True)
            await self._refuse(client, "unknown", INVALID)
        if self._unknown.get(key_hash) is not None:
            await self._refuse(client, "cached", INVALID)
        failures = self.failures
        hit = None
        if failures is not None:
            subject = failures.subject(client)
            blocked = failures.blocked_for(subject)
            if blocked is not None:
                FAILURES["limited"].inc()
                raise too_many_failures(blocked, failures.limit)
            # Counted before the lookup, so concurrent requests cannot all slip past the limit.
            hit = await failures.hit(subject)
            if not hit.allowed:
                FAILURES["limited"].inc()
                raise too_many_failures(hit.retry_after, failures.limit)
        row = await self._lookup(key_hash)
        if row is None:
            self._unknown.set(key_hash, True)
            FAILURES["unknown"].inc()
            raise NotAuthorizedException(INVALID)
        if hit is not None and failures is not None:
            await failures.refund(hit)
        return self._verified(key_hash, row)

    def verified_recently(self, key: str) -> Principal | None:
        """The key's principal when this instance verified it less than `AUTH_CACHE_TTL` ago, else None; no I/O
        and nothing counted, so a caller can take the full `authenticate` path on None."""
        cached = self._cache.get(hash_key(key)) if is_well_formed(key) else None
        if cached is not None and time.monotonic() - cached[1] < self._ttl:
            return cached[0]
        return None

    async def _lookup(self, key_hash: str) -> ApiKey | None:
        async with self._lookups, self._alchemy.get_session() as db:
            return await ApiKeyService(session=db).find_active_by_hash(key_hash)

    def _verified(self, key_hash: str, row: ApiKey) -> Principal:
        self._unknown.pop(key_hash)
        principal = Principal(key_id=row.id, name=row.name)
        self._cache.set(key_hash, (principal, time.monotonic()))
        return principal

    async def _refuse(self, client: str | None, outcome: str, detail: str) -> NoReturn:
        """A failure known without the database: counts it, then 401 (or 429 once over the limit)."""
        failures = self.failures
        if failures is not None:
            subject = failures.subject(client)
            blocked = failures.blocked_for(subject)
            if blocked is None:
                hit = await failures.hit(subject)
                blocked = None if hit.allowed else hit.retry_after
            if blocked is not None:
                FAILURES["limited"].inc()
                raise too_many_failures(blocked, failures.limit)
        FAILURES[outcome].inc()
        raise NotAuthorizedException(detail)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    # The raw ASGI header list, first match, as Litestar's `Headers.get` answers: building `connection.headers`
    # (a parsed copy of every header) cost more than the rest of the key check on a cached read.
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def extract_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The presented key, stripped (not yet checked: see `is_well_formed`), or None when there is none."""
    return key_from_headers(connection.scope["headers"])


def key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """`extract_key` on a raw ASGI header list."""
    key = _header(headers, b"x-api-key")
    if key:
        return key.strip() or None
    auth = _header(headers, b"authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: ASGIApp, *, authenticator: ApiKeyAuthenticator, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.authenticator = authenticator

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        key = extract_key(connection)
        if not key:
            raise NotAuthorizedException("Missing API key: send X-API-Key or Authorization: Bearer.")
        client = connection.scope.get("client")
        principal = await self.authenticator.authenticate(key, client[0] if client else None)
        return AuthenticationResult(user=principal, auth=None)
