"""Webhook delivery latency: a run's end → the receiver has its signed `run.completed`.

    uv run python -m scripts.bench.webhooks [--runs 200] [--lanes 4]

Starts embedded Postgres and Valkey and two real Granian processes (A and B, default webhook settings but
WEBHOOK_ALLOW_PRIVATE_NETWORKS=true for the loopback receiver), registers one endpoint and runs `--runs` demo
runs on A (`--lanes` sessions at once). Per run it records three instants on this machine's clock: the
event's commit (`created_at` in the body, written in the transaction that commits the run's final status),
the client seeing `done` on the run's stream, and the receiver (a thread here) having the request. Reports
commit → receiver and done → receiver (negative when the webhook beats the stream's `done`), p50/p99, against
a raw httpx POST to the same receiver (the transport floor). Writes bench-results/webhooks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from scripts.bench.runs import summary
from tests.helpers import collect_sse
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers
from tests.webhook_receiver import Receiver


async def lane(client: httpx.AsyncClient, runs: int, done_at: dict[str, float]) -> None:
    sid = (await client.post("/api/v1/sessions", json={"title": "bench-webhooks"})).json()["id"]
    for n in range(runs):
        async with client.stream("POST", "/api/v1/query", json={"prompt": f"hi {n}", "session_id": sid}) as resp:
            events = await collect_sse(resp, timeout=30)
        done_at[events[0].data["run_id"]] = time.time()


async def raw_posts(url: str, n: int) -> list[float]:
    samples = []
    async with httpx.AsyncClient() as client:
        for _ in range(n):
            started = time.perf_counter()
            await client.post(url, content=b"{}", headers={"webhook-id": f"raw-{time.time_ns()}"})
            samples.append(time.perf_counter() - started)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench-results/webhooks.json"))
    args = parser.parse_args()

    servers = TestServers.start()
    from app.asgi import build_alchemy_config
    from app.lib import migrations

    await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
    key = await create_api_key(servers)
    logs = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    env = {"WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "LOG_LEVEL": "WARNING"}
    proc_a = GranianProcess.start(servers, "bench-wh-a", logs, **env)
    proc_b = GranianProcess.start(servers, "bench-wh-b", logs, **env)
    rec = Receiver().start()
    done_at: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=proc_a.base_url, headers={"X-API-Key": key}, timeout=60) as ca:
            resp = await ca.post("/api/v1/webhook-endpoints", json={"url": rec.url(), "events": ["run.completed"]})
            secret = resp.json()["secret"]
            await lane(ca, 5, {})  # warm-up
            per_lane = -(-args.runs // args.lanes)
            await asyncio.gather(*(lane(ca, per_lane, done_at) for _ in range(args.lanes)))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = {r.verify(secret)["data"]["id"] for r in rec.requests("/hook")}
                if set(done_at) <= got:
                    break
                await asyncio.sleep(0.05)
        floor = await raw_posts(rec.url("/raw"), args.runs)
    finally:
        proc_a.kill()
        proc_b.kill()
        rec.stop()
        servers.close()

    from_commit: list[float] = []
    from_done: list[float] = []
    for request in rec.requests("/hook"):
        body: dict[str, Any] = request.verify(secret)
        run_id = body["data"]["id"]
        if run_id not in done_at:
            continue  # warm-up
        from_commit.append(request.at - datetime.fromisoformat(body["created_at"]).timestamp())
        from_done.append(request.at - done_at[run_id])
    missing = len(done_at) - len(from_done)
    results = {
        "runs": len(done_at),
        "delivered": len(from_done),
        "missing": missing,
        "commit_to_receiver": summary(from_commit),
        "done_to_receiver": summary(from_done),
        "raw_post_floor": summary(floor),
    }
    c, d, f = results["commit_to_receiver"], results["done_to_receiver"], results["raw_post_floor"]
    print(f"\nruns {len(done_at)}, delivered {len(from_done)}, missing {missing}")
    print(f"{'measure':<34}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'outbox write -> receiver':<34}{c['p50_ms']:>10.2f}{c['p99_ms']:>10.2f}")
    print(f"{'client done -> receiver':<34}{d['p50_ms']:>10.2f}{d['p99_ms']:>10.2f}")
    print(f"{'raw httpx POST (floor)':<34}{f['p50_ms']:>10.2f}{f['p99_ms']:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
