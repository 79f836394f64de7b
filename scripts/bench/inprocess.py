"""CPU per request of the app's hottest routes, called in-process (no server, no load generator).

    uv run python -m scripts.bench.inprocess [--route get|create] [--requests 20000] [--env READ_SHORTCUT=false]

Starts embedded PostgreSQL and Valkey, one app instance (`create_app`, the default settings but no rate limit),
creates a session, then calls the app's ASGI entry point directly, one request after another, for a cache-hit
`GET /api/v1/sessions/{id}` or a `POST /api/v1/sessions`. It prints the process CPU time and the wall time per
request (the wall time includes the Valkey and Postgres round trips). One request at a time, this figure moves far
less with the load of a shared machine than a throughput test does, so it is the one to compare two trees or two
settings by; run them alternately. `--profile` adds a cProfile listing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.asgi import build_alchemy_config
from app.lib import migrations
from tests.instances import create_api_key, make_settings, start_instance
from tests.servers import TestServers

_CREATE_BODY = b'{"title": "bench", "tags": ["bench"]}'


def _scope(method: str, path: str, key: str, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"x-api-key", key.encode()), (b"user-agent", b"bench")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def measure(route: str, requests: int, overrides: dict[str, Any], profile: bool) -> dict[str, Any]:
    servers = TestServers.start()
    try:
        await migrations.upgrade(build_alchemy_config(make_settings(servers, "inprocess")))
        key = await create_api_key(servers)
        settings = make_settings(servers, "inprocess", app__rate_limit_per_minute=0, **overrides)
        instance = await start_instance("inprocess", settings)
        try:
            async with instance.client(key) as client:
                sid = (await client.post("/api/v1/sessions", json={"title": "bench"})).json()["id"]
                assert (await client.get(f"/api/v1/sessions/{sid}")).status_code == 200
            if route == "get":
                scope, body, expected = _scope("GET", f"/api/v1/sessions/{sid}", key, b""), b"", 200
            else:
                scope, body, expected = _scope("POST", "/api/v1/sessions", key, _CREATE_BODY), _CREATE_BODY, 201
            statuses: set[int] = set()

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.add(message["status"])

            app: Callable[..., Awaitable[None]] = instance.app

            async def run(count: int) -> None:
                for _ in range(count):
                    await app({**scope, "state": {}}, receive, send)

            await run(max(200, requests // 10))  # warm-up: caches, prepared statements, pools
            wall, cpu = time.perf_counter(), time.process_time()
            await run(requests)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert statuses == {expected}, statuses
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await run(requests)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(50)
        finally:
            await instance.stop()
    finally:
        servers.close()
    return {"route": route, "requests": requests, "cpu_us": cpu / requests * 1e6, "wall_us": wall / requests * 1e6}


def _setting(item: str) -> tuple[str, Any]:
    """`READ_SHORTCUT=false` -> (`app__read_shortcut`, False): an `AppSettings` field by its variable's name."""
    name, _, value = item.partition("=")
    parsed: Any = {"true": True, "false": False}.get(value.lower(), value)
    return f"app__{name.lower()}", parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=["get", "create"], default="get")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE of an app setting (AppSettings)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.route, args.requests, dict(map(_setting, args.env)), args.profile))
    print(f"{result['route']}: {result['cpu_us']:.0f} µs CPU, {result['wall_us']:.0f} µs wall per request "
          f"({result['requests']} requests, one at a time)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
