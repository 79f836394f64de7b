"""Per-key rate limits hold across instances (RATE_LIMIT_PER_MINUTE)."""

from __future__ import annotations

import asyncio

from tests.conftest import InstanceFactory


async def test_limit_is_shared_by_instances_and_per_key(
    instance_factory: InstanceFactory, api_key: str, other_api_key: str
) -> None:
    a = await instance_factory("rl-a", app__rate_limit_per_minute=10)
    b = await instance_factory("rl-b", app__rate_limit_per_minute=10)
    async with a.client(api_key) as ca, b.client(api_key) as cb, a.client(other_api_key) as other:
        # Keep the whole burst inside one minute window: if the window is about to roll, let it.
        probe = await other.get("/api/v1/sessions")
        if int(probe.headers["x-ratelimit-reset"]) < 5:
            await asyncio.sleep(int(probe.headers["x-ratelimit-reset"]) + 0.5)
        responses = [await (ca if i % 2 == 0 else cb).get("/api/v1/sessions") for i in range(12)]
        assert [r.status_code for r in responses] == [200] * 10 + [429] * 2
        assert [int(r.headers["x-ratelimit-remaining"]) for r in responses[:10]] == list(range(9, -1, -1))
        limited = responses[-1]
        assert limited.json()["code"] == "RATE_LIMITED"
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Another key has its own budget; health is never limited.
        assert (await other.get("/api/v1/sessions")).status_code == 200
        assert (await ca.get("/health/live")).status_code == 200
