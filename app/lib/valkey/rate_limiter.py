"""`FixedWindowRateLimiter`: a counter per subject per window, shared by every instance."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.keys import scoped_key
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
_HIT = "local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[1]) return n"


def counter_key(subject: str, window_start: int) -> str:
    """`agentapi:{ratelimit:<subject>}:<window>`: one key (one slot) per subject and window."""
    return scoped_key(f"ratelimit:{subject}", str(window_start))


class FixedWindowRateLimiter:
    def __init__(self, client: ValkeyClient, *, limit: int, window: int = 60) -> None:
        self._client = client
        self.limit = limit
        self.window = window
        self._hit = register_script(client, _HIT)
        self._refund = register_script(client, _REFUND)

    async def hit(self, subject: str) -> RateDecision:
        now = time.time()
        window_start = int(now // self.window) * self.window
        async with bounded():
            count = await self._hit(keys=[counter_key(subject, window_start)], args=[self.window + 5])
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
        async with bounded():
            # Decrement only an existing counter: never make one (without a TTL) for an expired window.
            await self._refund(keys=[counter_key(subject, window_start)])
