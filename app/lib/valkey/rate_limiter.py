"""`FixedWindowRateLimiter`: a counter per subject per window, shared by every instance."""

from __future__ import annotations

import time
from dataclasses import dataclass

from valkey.asyncio import Valkey

from app.lib.valkey.keys import global_key
from app.lib.valkey.timeouts import bounded


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int
    """Seconds until the window resets."""
    window_start: int = 0
    """The window the hit counted in (for `refund`)."""


_REFUND = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end return 0"


class FixedWindowRateLimiter:
    def __init__(self, client: Valkey, *, limit: int, window: int = 60) -> None:
        self._client = client
        self.limit = limit
        self.window = window

    async def hit(self, subject: str) -> RateDecision:
        now = time.time()
        window_start = int(now // self.window) * self.window
        key = global_key(f"ratelimit:{subject}:{window_start}")
        pipe = self._client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, self.window + 5)
        async with bounded():
            count, _ = await pipe.execute()
        reset_after = max(1, int(window_start + self.window - now + 0.999))
        return RateDecision(
            allowed=int(count) <= self.limit,
            limit=self.limit,
            remaining=max(0, self.limit - int(count)),
            reset_after=reset_after,
            window_start=window_start,
        )

    async def refund(self, subject: str, window_start: int) -> None:
        """Takes back one hit counted in the window `window_start` (a no-op once that window has expired)."""
        key = global_key(f"ratelimit:{subject}:{window_start}")
        async with bounded():
            # Decrement only an existing counter: never make one (without a TTL) for an expired window.
            await self._client.eval(_REFUND, 1, key)  # type: ignore[misc]
