"""`POST /api/v1/sessions` at a fixed concurrency against its physical limit on the same servers: a raw asyncpg
INSERT of the same row plus a Valkey SET of its cache entry, driven by the same number of concurrent workers
(each with its own pooled Postgres connection), in its own process.

    uv run python -m scripts.bench.creates [--concurrency 16] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts.bench.loadgen import LoadSpec
from scripts.bench.sessions import measure

_PAYLOAD = json.dumps(
    {
        "title": "bench",
        "status": "idle",
        "tags": ["bench"],
        "metadata": {},
        "version": 1,
        "owner_key_id": "00000000-0000-0000-0000-000000000000",
    }
).encode()


async def _raw_creates(
    database_url: str, valkey_url: str, owner: str, concurrency: int, duration: float
) -> dict[str, Any]:
    import asyncpg
    from valkey.asyncio import Valkey

    pool = await asyncpg.create_pool(database_url, min_size=concurrency, max_size=concurrency)
    vk = Valkey.from_url(valkey_url, max_connections=concurrency)
    owner_id = uuid.UUID(owner)
    latencies: list[float] = []

    async def worker(until: float) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            new_id = uuid.uuid4()
            now = datetime.now(UTC)
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO agent_session (id, owner_key_id, title, status, tags, metadata, total_turns,"
                    " total_cost_usd, input_tokens, output_tokens, version, queued_runs, created_at, updated_at)"
                    " VALUES ($1, $2, 'bench', 'idle', $3, '{}'::jsonb, 0, 0, 0, 0, 1, 0, $4, $4)",
                    new_id,
                    owner_id,
                    ["bench"],
                    now,
                )
            await vk.set(f"agentapi:{{{new_id}}}:session", _PAYLOAD, ex=7200)
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(worker(time.perf_counter() + 1.0) for _ in range(concurrency)))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + duration) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
        await vk.aclose()
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": round(n / elapsed, 1),
        "p50_ms": round(latencies[n // 2] * 1000, 3) if n else 0.0,
        "p99_ms": round(latencies[min(n - 1, int(0.99 * n))] * 1000, 3) if n else 0.0,
        "errors": 0,
        "generator": f"asyncpg+valkey-py, {concurrency} concurrent",
    }


def _raw_sync(database_url: str, valkey_url: str, owner: str, concurrency: int, duration: float) -> dict[str, Any]:
    return asyncio.run(_raw_creates(database_url, valkey_url, owner, concurrency, duration))


def raw_creates(database_url: str, valkey_url: str, owner: str, concurrency: int, duration: float) -> dict[str, Any]:
    """The raw INSERT + SET loop in a fresh process (its own event loop and GIL, like a load generator)."""
    url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_raw_sync, url, valkey_url, owner, concurrency, duration).result(timeout=duration + 120)


def app_creates(
    base_url: str, key: str, concurrency: int, duration: float, warmup: float, loadgen: str
) -> dict[str, Any]:
    spec = LoadSpec(
        url=f"{base_url}/api/v1/sessions",
        method="POST",
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        body=b'{"title":"bench","tags":["bench"]}',
        expect_status=201,
        connections=concurrency,
        duration=duration,
        warmup=warmup,
    )
    return measure(spec, loadgen).as_dict()


async def main(argv: list[str] | None = None) -> int:
    import httpx

    from tests.instances import create_api_key, make_settings
    from tests.processes import GranianProcess
    from tests.servers import TestServers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the app instance")
    args = parser.parse_args(argv)
    servers = TestServers.start()
    try:
        from app.asgi import build_alchemy_config
        from app.lib import migrations

        await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
        key = await create_api_key(servers, f"bench-{uuid.uuid4().hex[:8]}")
        logs = Path(tempfile.mkdtemp(prefix="bench-create-"))
        env = {"RATE_LIMIT_PER_MINUTE": "0", **dict(item.split("=", 1) for item in args.env)}
        proc = GranianProcess.start(servers, "create", logs, workers=args.workers, **env)
        try:
            async with httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": key}) as client:
                sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
            import asyncpg

            pg = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg://", "postgresql://"))
            owner = str(await pg.fetchval("SELECT owner_key_id FROM agent_session WHERE id = $1", uuid.UUID(sid)))
            await pg.close()
            app = await asyncio.to_thread(
                app_creates, proc.base_url, key, args.concurrency, args.duration, 2.0, args.loadgen
            )
        finally:
            proc.kill()
        raw = await asyncio.to_thread(
            raw_creates, servers.database_url, servers.valkey_url, owner, args.concurrency, args.duration
        )
    finally:
        servers.close()
    print(f"POST /sessions x{args.concurrency}: {app['rps']:.0f} req/s p50 {app['p50_ms']} ms p99 {app['p99_ms']} ms")
    print(f"raw INSERT+SET x{args.concurrency}: {raw['rps']:.0f} req/s p50 {raw['p50_ms']} ms p99 {raw['p99_ms']} ms")
    print(f"ratio {app['rps'] / raw['rps']:.2f} (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
