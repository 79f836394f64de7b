"""Per-API-key rate limits across all instances, and the per-address limit on failed authentications.

Every request of a key counts against its `default` budget (`RATE_LIMIT_PER_MINUTE`: requests per key per
minute, all routes). Route handlers may name a further group in `opt["rate_limit_group"]`: starting a run is
the `runs` group, which with `RATE_LIMIT_RUNS_PER_MINUTE` > 0 also has its own, tighter budget; such a request
counts against both and is refused when either is spent. A budget without a limiter is not limited. Runs after
authentication, so the subject is the key's id (never the key). If Valkey is unreachable the request is let
through: limiting is protection, not correctness, and sessions must stay readable.

`AuthFailureLimiter` runs before any of that, inside authentication: see its docstring."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.keys.principal import Principal
from app.lib.client_address import limit_subject
from app.lib.lru import BoundedTTLCache
from app.lib.problems import PROBLEM_JSON, ApiError, Problem
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.rate_limiter import FixedWindowRateLimiter

RATE_LIMIT_GROUP_OPT = "rate_limit_group"
DEFAULT_GROUP = "default"
RUNS_GROUP = "runs"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FailureHit:
    allowed: bool
    retry_after: int
    """Seconds until the client's window ends (when it may try again if not allowed)."""
    subject: str
    window_start: int
    shared: bool
    """Counted in Valkey (else in this process only, while Valkey is unreachable)."""


class AuthFailureLimiter:
    """At most `limit` failed authentications per client address per minute, counted across all instances.

    A request whose key is not known on this instance costs one count *before* the database is asked (a key that
    turns out valid gets its count back), so however many requests a client sends at once, at most `limit` of them
    per minute reach Postgres. Over the limit the client gets 429 `RATE_LIMITED` with `Retry-After`; this
    instance then remembers the block until the window ends and answers without even asking Valkey.

    Counts live in Valkey (`agentapi:{ratelimit:authfail:<address>}:<window>`). When Valkey is unreachable the
    count falls back to this process (the same limit per instance) and Valkey is tried again after
    `valkey_retry` seconds, so an outage never turns failed logins into a database query each. The address is an
    IPv4 address or an IPv6 /64 (`limit_subject`); behind proxies it is the one `TRUSTED_PROXIES` resolves."""

    def __init__(
        self,
        shared: FixedWindowRateLimiter | None,
        *,
        limit: int,
        window: int = 60,
        max_subjects: int = 10_000,
        valkey_retry: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shared = shared
        self.limit = limit
        self.window = window
        self._valkey_retry = valkey_retry
        self._valkey_retry_at = 0.0
        self._clock = clock
        # Both bounded, least recently used out first: a flood from many addresses cannot grow memory.
        self._blocked: BoundedTTLCache[str, float] = BoundedTTLCache(max_subjects, window, clock=clock)
        self._local: BoundedTTLCache[str, tuple[int, int]] = BoundedTTLCache(max_subjects, window + 5, clock=clock)

    @staticmethod
    def subject(host: str | None) -> str:
        return limit_subject(host)

    def blocked_for(self, subject: str) -> int | None:
        """Seconds this address stays refused, from this instance's memory only (no I/O); None if not blocked."""
        until = self._blocked.get(subject)
        if until is None:
            return None
        return max(1, math.ceil(until - self._clock()))

    async def hit(self, subject: str) -> FailureHit:
        """Counts one failure (or one lookup that may fail) against `subject`."""
        now = self._clock()
        window_start = int(now // self.window) * self.window
        reset_after = max(1, math.ceil(window_start + self.window - now))
        if self._shared is not None and time.monotonic() >= self._valkey_retry_at:
            try:
                decision = await self._shared.hit(f"authfail:{subject}")
            except VALKEY_ERRORS:
                self._valkey_retry_at = time.monotonic() + self._valkey_retry
                logger.warning("failed-authentication limit: Valkey unreachable, counting in this process for now")
            else:
                return self._decided(subject, decision.allowed, decision.reset_after, decision.window_start, True)
        start, count = self._local.get(subject) or (window_start, 0)
        if start != window_start:
            start, count = window_start, 0
        count += 1
        self._local.set(subject, (start, count))
        return self._decided(subject, count <= self.limit, reset_after, start, False)

    def _decided(self, subject: str, allowed: bool, reset_after: int, window_start: int, shared: bool) -> FailureHit:
        if not allowed:
            self._blocked.set(subject, self._clock() + reset_after, ttl=reset_after)
        return FailureHit(allowed, reset_after, subject, window_start, shared)

    async def refund(self, hit: FailureHit) -> None:
        """Gives back the count of a lookup that found a valid key."""
        if hit.shared and self._shared is not None:
            with contextlib.suppress(*VALKEY_ERRORS):
                await self._shared.refund(f"authfail:{hit.subject}", hit.window_start)
            return
        local = self._local.get(hit.subject)
        if local is not None and local[0] == hit.window_start and local[1] > 0:
            self._local.set(hit.subject, (local[0], local[1] - 1))


def too_many_failures(retry_after: int, limit: int) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMITED",
        f"Too many failed authentications from this address (at most {limit} per minute); retry after {retry_after} s.",
        title="Too many failed authentications",
        headers={"Retry-After": str(retry_after)},
    )


class RateLimitMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, limiters: dict[str, FixedWindowRateLimiter]) -> None:
        self.limiters = limiters

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        user = scope.get("user")
        handler = scope.get("route_handler")
        group = handler.opt.get(RATE_LIMIT_GROUP_OPT, DEFAULT_GROUP) if handler is not None else DEFAULT_GROUP
        budgets = [
            (name, self.limiters[name]) for name in dict.fromkeys((DEFAULT_GROUP, group)) if name in self.limiters
        ]
        if not budgets or not isinstance(user, Principal):
            await next_app(scope, receive, send)
            return
        try:
            decisions = [(name, limiter, await limiter.hit(f"{name}:{user.key_id}")) for name, limiter in budgets]
        except VALKEY_ERRORS:
            await next_app(scope, receive, send)
            return
        # The binding budget: a spent one, else the one with the least left; the headers describe it.
        group, limiter, decision = min(decisions, key=lambda d: (d[2].allowed, d[2].remaining))
        # Both the common X-RateLimit-* headers and the IETF draft's RateLimit-* names.
        headers = {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": str(decision.reset_after),
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset_after),
            "RateLimit-Policy": f"{decision.limit};w={limiter.window}",
        }
        if not decision.allowed:
            detail = f"At most {decision.limit} requests per minute per API key for {group} requests."
            retry = {**headers, "Retry-After": str(decision.reset_after)}
            if handler is not None and handler.opt.get("error_shape") == "openai":
                # /v1 answers in OpenAI's error shape (app.domain.openai.errors).
                from app.domain.openai.errors import error_body

                await ASGIResponse(
                    body=error_body(429, detail, code="rate_limited"),
                    status_code=429,
                    media_type="application/json",
                    headers=retry,
                )(scope, receive, send)
                return
            body = Problem.of(429, "RATE_LIMITED", "Rate limit exceeded", detail, scope["path"])
            response = ASGIResponse(
                body=msgspec.json.encode(body),
                status_code=429,
                media_type=PROBLEM_JSON,
                headers=retry,
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                ]
            await send(message)

        await next_app(scope, receive, send_with_headers)
