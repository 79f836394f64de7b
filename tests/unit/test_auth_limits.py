"""The pieces of cheap failed authentication, without servers: the bounded caches, the limiter's local
fallback and the CORS settings. (Across instances, with real Valkey and Postgres:
tests/integration/test_auth_failures.py.)"""

from __future__ import annotations

import pytest

from app.domain.keys.auth import MAX_NEGATIVE_TTL, ApiKeyAuthenticator, is_well_formed
from app.domain.keys.rate_limit import AuthFailureLimiter
from app.lib.cors import ALLOW_HEADERS, EXPOSE_HEADERS, build_cors_config
from app.lib.lru import BoundedTTLCache


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_cache_entries_expire() -> None:
    clock = Clock()
    cache: BoundedTTLCache[str, int] = BoundedTTLCache(10, 5.0, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2, ttl=1.0)
    clock.now += 0.9
    assert cache.get("a") == 1 and cache.get("b") == 2
    clock.now += 0.2
    assert cache.get("b") is None
    assert "b" not in cache
    clock.now += 4.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_full_cache_evicts_least_recently_used_one_at_a_time() -> None:
    cache: BoundedTTLCache[str, int] = BoundedTTLCache(3, 60.0)
    for key in ("a", "b", "c"):
        cache.set(key, 1)
    assert cache.get("a") == 1  # now the most recently used
    for n in range(100):  # a flood of new keys never empties the cache
        cache.set(f"flood-{n}", 1)
        assert len(cache) == 3
    assert cache.get("flood-99") == 1 and cache.get("flood-98") == 1
    cache.set("x", 1)
    assert cache.get("flood-97") is None
    assert cache.get("x") == 1
    with pytest.raises(ValueError, match="maxsize"):
        BoundedTTLCache(0, 1.0)


async def test_local_limiter_counts_blocks_until_the_window_ends_and_refunds() -> None:
    clock = Clock(600.0)  # the start of a minute window
    limiter = AuthFailureLimiter(None, limit=3, clock=clock)
    assert limiter.blocked_for("203.0.113.5") is None
    hits = [await limiter.hit("203.0.113.5") for _ in range(3)]
    assert [h.allowed for h in hits] == [True, True, True]
    assert not any(h.shared for h in hits)
    await limiter.refund(hits[-1])  # that lookup found a valid key
    assert (await limiter.hit("203.0.113.5")).allowed
    clock.now += 20
    over = await limiter.hit("203.0.113.5")
    assert not over.allowed
    assert over.retry_after == 40
    assert limiter.blocked_for("203.0.113.5") == 40
    assert limiter.blocked_for("203.0.113.6") is None  # its own budget
    assert (await limiter.hit("203.0.113.6")).allowed
    clock.now += 40.5  # the next window
    assert limiter.blocked_for("203.0.113.5") is None
    assert (await limiter.hit("203.0.113.5")).allowed


async def test_local_limiter_memory_is_bounded() -> None:
    limiter = AuthFailureLimiter(None, limit=1, max_subjects=50, clock=Clock(600.0))
    for n in range(1000):
        await limiter.hit(f"10.0.{n // 256}.{n % 256}")
        await limiter.hit(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._local) == 50
    assert len(limiter._blocked) == 50


def test_well_formed_keys() -> None:
    assert is_well_formed("aak_" + "A" * 43)
    assert is_well_formed("x" * 256)
    for bad in ["", "x" * 257, "has space", "tab\tinside", "nul\x00", "caf\xe9", "\u2603", "é" * 3, "line\nbreak"]:
        assert not is_well_formed(bad), bad


def test_negative_ttl_is_capped_at_a_minute() -> None:
    auth = ApiKeyAuthenticator(None, 30.0, negative_ttl=3600.0)  # type: ignore[arg-type]
    assert auth._unknown.ttl == MAX_NEGATIVE_TTL == 60.0


def test_cors_off_by_default_and_validated() -> None:
    assert build_cors_config([]) is None
    assert build_cors_config([" ", ""]) is None
    config = build_cors_config(["https://app.example.com/", "http://127.0.0.1:5173", "https://*.example.org"])
    assert config is not None
    assert config.allow_origins == ["https://app.example.com", "http://127.0.0.1:5173", "https://*.example.org"]
    assert config.is_origin_allowed("https://app.example.com")
    assert config.is_origin_allowed("https://a.example.org")
    assert not config.is_origin_allowed("https://app.example.com.evil.test")
    assert not config.is_origin_allowed("http://app.example.com")
    assert not config.allow_credentials
    for header in ("authorization", "x-api-key", "idempotency-key", "if-match", "last-event-id", "content-type"):
        assert header in config.allow_headers
    assert {"ETag", "Location", "Retry-After", "X-Request-ID", "Idempotent-Replayed", "X-Session-ID"} <= set(
        config.expose_headers
    )
    assert set(EXPOSE_HEADERS) == set(config.expose_headers)
    assert len(ALLOW_HEADERS) == len(config.allow_headers)
    star = build_cors_config(["*"])
    assert star is not None and star.is_allow_all_origins
    assert build_cors_config(["https://a.example"], allow_credentials=True) is not None
    with pytest.raises(ValueError, match="CORS_ALLOW_CREDENTIALS"):
        build_cors_config(["*"], allow_credentials=True)
    for bad in ["app.example.com", "ftp://x", "https://a.example/path", "null", "https://a b"]:
        with pytest.raises(ValueError, match="CORS_ALLOW_ORIGINS"):
            build_cors_config([bad])
