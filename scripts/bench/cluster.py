"""Valkey Cluster rows beside the single-node ones, both measured in this script on this machine.

    uv run python -m scripts.bench.cluster [--duration 8] [--connections 32] [--interrupts 100] [--loadgen auto]

Starts embedded PostgreSQL, one embedded Valkey and a real 3-primary/3-replica Valkey Cluster (tests/cluster.py).
For each of the two (single node, then `VALKEY_CLUSTER=true`), starts two real Granian processes A and B and
measures:
- the cache-hit read path: `GET /api/v1/sessions/{id}` on A (requests/s, p50/p99), load from wrk or the Python
  generator (scripts/bench/loadgen.py);
- interrupt latency: `POST /interrupt` on B → `done` on A's stream, p50/p99;
- the control transport's floor: XADD → a waiting XREAD BLOCK.
Prints each row with the cluster/single ratio; writes bench-results/cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from scripts.bench.loadgen import LoadResult, LoadSpec, run_in_process, run_wrk
from scripts.bench.runs import close_clients, interrupt_latency, stream_roundtrip, summary, transport_clients
from tests.cluster import ValkeyTestCluster
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers


def load(spec: LoadSpec, loadgen: str) -> LoadResult:
    wrk = shutil.which("wrk")
    if loadgen == "wrk" or (loadgen == "auto" and wrk):
        if not wrk:
            raise SystemExit("--loadgen wrk: wrk is not on PATH")
        return run_wrk(spec, wrk)
    return run_in_process(spec)


async def measure(servers: TestServers, label: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix=f"bench-cluster-{label}-"))
    proc_a = GranianProcess.start(servers, f"bench-{label}-a", logs)
    proc_b = GranianProcess.start(servers, f"bench-{label}-b", logs)
    try:
        headers = {"X-API-Key": key}
        async with (
            httpx.AsyncClient(base_url=proc_a.base_url, headers=headers, timeout=60) as ca,
            httpx.AsyncClient(base_url=proc_b.base_url, headers=headers, timeout=60) as cb,
        ):
            sid = (await ca.post("/api/v1/sessions", json={"title": "bench-read"})).json()["id"]
            assert (await ca.get(f"/api/v1/sessions/{sid}")).status_code == 200
            read = await asyncio.to_thread(
                load,
                LoadSpec(
                    url=f"{proc_a.base_url}/api/v1/sessions/{sid}",
                    headers=headers,
                    connections=args.connections,
                    duration=args.duration,
                    warmup=2.0,
                ),
                args.loadgen,
            )
            await interrupt_latency(ca, cb, 5)  # warm-up
            interrupts = await interrupt_latency(ca, cb, args.interrupts)
        transport = transport_clients(servers.valkey_url, cluster=servers.valkey_cluster)
        try:
            await stream_roundtrip(transport, 10)  # warm-up
            rtt = await stream_roundtrip(transport, args.interrupts)
        finally:
            await close_clients(transport)
    finally:
        proc_a.kill()
        proc_b.kill()
    return {
        "read": read.as_dict(),
        "interrupt_latency": summary(interrupts),
        "stream_roundtrip": summary(rtt),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of read load per backend")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--interrupts", type=int, default=100)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench-results/cluster.json"))
    args = parser.parse_args()

    servers = TestServers.start()
    cluster = await asyncio.to_thread(ValkeyTestCluster.start)
    try:
        from app.asgi import build_alchemy_config
        from app.lib import migrations

        await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
        key = await create_api_key(servers)
        single = await measure(servers, "single", key, args)
        clustered = await measure(
            dataclasses.replace(servers, valkey_url=cluster.url, valkey_cluster=True, _valkey_dir=None),
            "cluster",
            key,
            args,
        )
    finally:
        await asyncio.to_thread(cluster.close)
        servers.close()

    rows = [
        ("GET /sessions/{id} cache hit (req/s)", single["read"]["rps"], clustered["read"]["rps"]),
        ("GET /sessions/{id} p50 (ms)", single["read"]["p50_ms"], clustered["read"]["p50_ms"]),
        ("GET /sessions/{id} p99 (ms)", single["read"]["p99_ms"], clustered["read"]["p99_ms"]),
        (
            "interrupt B→done on A p50 (ms)",
            single["interrupt_latency"]["p50_ms"],
            clustered["interrupt_latency"]["p50_ms"],
        ),
        (
            "interrupt B→done on A p99 (ms)",
            single["interrupt_latency"]["p99_ms"],
            clustered["interrupt_latency"]["p99_ms"],
        ),
        ("XADD→XREAD BLOCK p50 (ms)", single["stream_roundtrip"]["p50_ms"], clustered["stream_roundtrip"]["p50_ms"]),
        ("XADD→XREAD BLOCK p99 (ms)", single["stream_roundtrip"]["p99_ms"], clustered["stream_roundtrip"]["p99_ms"]),
    ]
    print(f"\n{'measure':<40}{'single node':>14}{'cluster 3+3':>14}{'cluster/single':>16}")
    for name, one, many in rows:
        print(f"{name:<40}{one:>14.2f}{many:>14.2f}{many / one:>16.3f}")
    errors = single["read"]["errors"] + clustered["read"]["errors"]
    print(f"\nread errors: {errors}; loadgen: {single['read']['generator']}, {args.connections} connections")
    p99 = clustered["interrupt_latency"]["p99_ms"]
    print(f"interrupt p99 target 20 ms on the cluster: {'met' if p99 <= 20 else 'NOT met'} ({p99:.2f} ms)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"single": single, "cluster": clustered}, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
