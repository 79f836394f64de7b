"""Crash detection with default settings: SIGKILL the instance running a run, time until a follower on the
other instance gets `done` (after `error RUN_LOST`). Repeats `--kills` times; prints median and worst.

    uv run python -m scripts.bench.crash_detection [--kills 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from app.asgi import build_alchemy_config
from app.lib import migrations
from tests.helpers import iter_sse
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers


async def one_kill(servers: TestServers, key: str, survivor: GranianProcess, log_dir: Path, n: int) -> float:
    doomed = await asyncio.to_thread(GranianProcess.start, servers, f"doomed-{n}", log_dir)
    try:
        headers = {"X-API-Key": key}
        async with (
            httpx.AsyncClient(base_url=doomed.base_url, headers=headers, timeout=60) as cd,
            httpx.AsyncClient(base_url=survivor.base_url, headers=headers, timeout=60) as cs,
        ):
            sid = (await cs.post("/api/v1/sessions", json={})).json()["id"]
            run = (await cd.post(f"/api/v1/sessions/{sid}/runs", json={"prompt": "sleep 120"})).json()
            async with cs.stream("GET", f"/api/v1/runs/{run['id']}/events") as follow:
                events = iter_sse(follow).__aiter__()
                async for ev in events:
                    if ev.event == "message" and ev.data["role"] == "assistant":
                        break
                await asyncio.to_thread(doomed.kill)
                killed = time.monotonic()
                codes = []
                async for ev in events:
                    if ev.event == "error":
                        codes.append(ev.data["code"])
                    if ev.event == "done":
                        break
                elapsed = time.monotonic() - killed
            assert codes == ["RUN_LOST"], codes
            return elapsed
    finally:
        await asyncio.to_thread(doomed.kill)


async def main(servers: TestServers, kills: int) -> None:
    try:
        key = await create_api_key(servers)
        with tempfile.TemporaryDirectory() as tmp:
            log_dir = Path(tmp)
            survivor = await asyncio.to_thread(GranianProcess.start, servers, "survivor", log_dir)
            try:
                times = [await one_kill(servers, key, survivor, log_dir, n) for n in range(kills)]
            finally:
                survivor.kill()
        print(f"SIGKILL -> done on the other instance, {kills} kills, default settings:")
        print("  " + ", ".join(f"{t:.2f}" for t in times) + " s")
        print(f"  median {statistics.median(times):.2f} s, worst {max(times):.2f} s (SPEC: within 15 s)")
    finally:
        servers.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    test_servers = TestServers.start()
    migrations.upgrade_sync(build_alchemy_config(make_settings(test_servers, "migrator")))
    asyncio.run(main(test_servers, parser.parse_args().kills))
