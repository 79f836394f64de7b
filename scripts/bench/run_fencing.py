"""Two figures of the runs' foundations, with real Granian processes on embedded Postgres and Valkey:

capacity   N concurrent `POST /query {"prompt": "sleep 4"}` streams on ONE instance with the default
           database pool (10 + 10): how many end with `done {completed}`, how many errors.
flush race a run streams on A; FLUSHALL; at once `POST /resume` on B: must be 409 SESSION_BUSY, and the
           first run must end with exactly one `done` (no RUN_LOST). Tried `--races` times.

  uv run python -m scripts.bench.run_fencing [--runs 200] [--races 100]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from pathlib import Path

import httpx
from valkey.asyncio import Valkey

from app.asgi import build_alchemy_config
from app.lib import migrations
from tests.helpers import iter_sse
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers


async def capacity(base_url: str, key: str, runs: int) -> None:
    limits = httpx.Limits(max_connections=runs + 10, max_keepalive_connections=runs + 10)
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}, timeout=120, limits=limits) as c:

        async def one() -> str:
            try:
                async with c.stream("POST", "/api/v1/query", json={"prompt": "sleep 4"}) as resp:
                    if resp.status_code != 200:
                        return f"HTTP {resp.status_code} {(await resp.aread())[:80]!r}"
                    async for ev in iter_sse(resp):
                        if ev.event == "error":
                            return f"error {ev.data.get('code')}"
                        if ev.event == "done":
                            return f"done {ev.data['reason']}"
                    return "no done"
            except httpx.HTTPError as exc:
                return f"transport {type(exc).__name__}"

        started = time.monotonic()
        outcomes = collections.Counter(await asyncio.gather(*(one() for _ in range(runs))))
        elapsed = time.monotonic() - started
    print(f"capacity: {runs} concurrent 4 s runs on one instance (pool 10+10): {dict(outcomes)} in {elapsed:.1f} s")


async def flush_race(a: str, b: str, key: str, valkey_url: str, races: int) -> None:
    valkey = Valkey.from_url(valkey_url)
    tally: collections.Counter[str] = collections.Counter()
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(headers=headers, timeout=60) as c:
        for _ in range(races):
            sid = (await c.post(f"{a}/api/v1/sessions", json={})).json()["id"]
            async with c.stream("POST", f"{a}/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 0.6"}) as resp:
                events = iter_sse(resp).__aiter__()
                async for ev in events:
                    if ev.event == "message" and ev.data.get("role") == "assistant":
                        break
                await valkey.flushall()
                second = await c.post(f"{b}/api/v1/sessions/{sid}/resume", json={"prompt": "me too"})
                tally[f"second run: {second.status_code}"] += 1
                names = [ev.event async for ev in events if not ev.comment]
                errors = names.count("error")
            tally[f"first run: {names.count('done')} done, {errors} error"] += 1
    await valkey.aclose()
    print(f"flush race x{races}: {dict(tally)}")


async def main(servers: TestServers, runs: int, races: int) -> None:
    key = await create_api_key(servers)
    with tempfile.TemporaryDirectory() as tmp:
        a = await asyncio.to_thread(GranianProcess.start, servers, "fence-a", Path(tmp))
        b = await asyncio.to_thread(GranianProcess.start, servers, "fence-b", Path(tmp))
        try:
            if runs:
                await capacity(a.base_url, key, runs)
            if races:
                await flush_race(a.base_url, b.base_url, key, servers.valkey_url, races)
        finally:
            a.kill()
            b.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--races", type=int, default=100)
    args = parser.parse_args()
    test_servers = TestServers.start()
    try:
        migrations.upgrade_sync(build_alchemy_config(make_settings(test_servers, "migrator")))
        asyncio.run(main(test_servers, args.runs, args.races))
    finally:
        test_servers.close()
