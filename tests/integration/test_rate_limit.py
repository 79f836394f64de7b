"""Per-key rate limits hold across instances (RATE_LIMIT_PER_MINUTE)."""

from __future__ import annotations

import asyncio

import httpx

from tests.instances import InstanceFactory


async def inside_one_window(client: httpx.AsyncClient) -> None:
    """Keeps a test's burst inside one minute window: if the window is about to roll over, let it first.
    `client` uses another key than the burst, so the probe costs the burst nothing."""
    reset = int((await client.get("/api/v1/sessions")).headers["ratelimit-reset"])
    if reset < 5:
        await asyncio.sleep(reset + 0.5)


async def test_limit_is_shared_by_instances_and_per_key(
    instance_factory: InstanceFactory, api_key: str, other_api_key: str
) -> None:
    a = await instance_factory("rl-a", app__rate_limit_per_minute=10)
    b = await instance_factory("rl-b", app__rate_limit_per_minute=10)
    async with a.client(api_key) as ca, b.client(api_key) as cb, a.client(other_api_key) as other:
        await inside_one_window(other)
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


async def test_starting_runs_has_a_tighter_budget_within_the_total(
    instance_factory: InstanceFactory, api_key: str, other_api_key: str
) -> None:
    a = await instance_factory("rl-runs-a", app__rate_limit_per_minute=50, app__rate_limit_runs_per_minute=2)
    b = await instance_factory("rl-runs-b", app__rate_limit_per_minute=50, app__rate_limit_runs_per_minute=2)
    async with a.client(api_key) as ca, b.client(api_key) as cb, a.client(other_api_key) as other:
        await inside_one_window(other)
        runs = [await c.post("/api/v1/query/single", json={"prompt": "hi"}) for c in (ca, cb, ca)]
        assert [r.status_code for r in runs] == [200, 200, 429]
        assert runs[0].headers["ratelimit-limit"] == "2"  # the binding budget is the runs one
        assert runs[0].headers["ratelimit-policy"] == "2;w=60"
        assert "runs" in runs[2].json()["detail"]
        # The three run requests counted against the key's total too.
        read = await cb.get("/api/v1/sessions")
        assert read.status_code == 200
        assert read.headers["x-ratelimit-limit"] == "50"
        assert int(read.headers["x-ratelimit-remaining"]) == 50 - 4


async def test_without_a_runs_budget_runs_and_reads_share_one(
    instance_factory: InstanceFactory, api_key: str, other_api_key: str
) -> None:
    """RATE_LIMIT_PER_MINUTE is requests per key per minute, all routes: starting runs is not extra budget."""
    a = await instance_factory("rl-one-a", app__rate_limit_per_minute=4)
    b = await instance_factory("rl-one-b", app__rate_limit_per_minute=4)
    async with a.client(api_key) as ca, b.client(api_key) as cb, a.client(other_api_key) as other:
        await inside_one_window(other)
        statuses = [
            (await ca.get("/api/v1/sessions")).status_code,
            (await cb.post("/api/v1/query/single", json={"prompt": "hi"})).status_code,
            (await ca.get("/api/v1/sessions")).status_code,
            (await cb.post("/api/v1/query/single", json={"prompt": "hi"})).status_code,
            (await ca.post("/api/v1/query/single", json={"prompt": "hi"})).status_code,
            (await cb.get("/api/v1/sessions")).status_code,
        ]
        assert statuses == [200, 200, 200, 200, 429, 429]


async def test_runs_only_limit_leaves_other_routes_unlimited(instance_factory: InstanceFactory, api_key: str) -> None:
    a = await instance_factory("rl-runs-only", app__rate_limit_per_minute=0, app__rate_limit_runs_per_minute=1)
    async with a.client(api_key) as ca:
        read = await ca.get("/api/v1/sessions")
        assert read.status_code == 200
        assert "x-ratelimit-limit" not in read.headers
        first = await ca.post("/api/v1/query/single", json={"prompt": "hi"})
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining"] == "0"
