"""API-key authentication: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

Keys are looked up by hash and the answer is kept in process for `AUTH_CACHE_TTL` seconds (default 30),
so a revoked key stops working everywhere within a minute while the hot path stays off the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from app.domain.keys.hashing import hash_key
from app.domain.keys.services import ApiKeyService


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: UUID
    name: str


class ApiKeyAuthenticator:
    def __init__(self, alchemy: SQLAlchemyAsyncConfig, ttl: float) -> None:
        self._alchemy = alchemy
        self._ttl = ttl
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        key_hash = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self._alchemy.get_session() as db:
            row = await ApiKeyService(session=db).find_active_by_hash(key_hash)
        if row is None:
            self._cache.pop(key_hash, None)
            return None
        principal = Principal(key_id=row.id, name=row.name)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_hash] = (principal, now + self._ttl)
        return principal

    def forget(self) -> None:
        self._cache.clear()


def extract_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    key = connection.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = connection.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        key = extract_key(connection)
        if not key:
            raise NotAuthorizedException("Missing API key: send X-API-Key or Authorization: Bearer.")
        authenticator: ApiKeyAuthenticator = connection.app.state["authenticator"]
        principal = await authenticator.authenticate(key)
        if principal is None:
            raise NotAuthorizedException("Invalid or revoked API key.")
        return AuthenticationResult(user=principal, auth=None)
