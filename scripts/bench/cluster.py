"""Valkey Cluster rows beside the single-node ones, both measured in this script on this machine.

    uv run python -m scripts.bench.cluster [--duration 8] [--rounds 4] [--connections 32] [--interrupts 100]

Starts embedded PostgreSQL, one embedded Valkey and a real 3-primary/3-replica Valkey Cluster (tests/cluster.py).
For each of the two (single node, and `VALKEY_CLUSTER=true`) it starts two real Granian processes A and B, then
measures, alternating the two stacks over `--rounds` rounds so that a busy moment of a shared machine hits both:
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
import tempfile
from pathlib import Path
from typing import Any

import httpx

from scripts.bench.loadgen import LoadResult, LoadSpec
from scripts.bench.runs import close_clients, interrupt_latency, stream_roundtrip, summary, transport_clients
from scripts.bench.sessions import measure as measure_load
from tests.cluster import ValkeyTestCluster
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers


@dataclasses.dataclass
class Stack:
    """Two Granian processes (A and B) on one Valkey (a node or the cluster), with a client each."""

    label: str
    servers: TestServers
    a: GranianProcess
    b: GranianProcess
    ca: httpx.AsyncClient
    cb: httpx.AsyncClient
    sid: str

    @classmethod
    async def start(cls, servers: TestServers, label: str, key: str) -> Stack:
        logs = Path(tempfile.mkdtemp(prefix=f"bench-cluster-{label}-"))
        a = GranianProcess.start(servers, f"bench-{label}-a", logs)
        b = GranianProcess.start(servers, f"bench-{label}-b", logs)
        headers = {"X-API-Key": key}
        ca = httpx.AsyncClient(base_url=a.base_url, headers=headers, timeout=60)
        cb = httpx.AsyncClient(base_url=b.base_url, headers=headers, timeout=60)
        sid = (await ca.post("/api/v1/sessions", json={"title": "bench-read"})).json()["id"]
        assert (await ca.get(f"/api/v1/sessions/{sid}")).status_code == 200
        await interrupt_latency(ca, cb, 5)  # warm-up
        return cls(label, servers, a, b, ca, cb, sid)

    def read_load(self, key: str, args: argparse.Namespace, seconds: float) -> LoadResult:
        spec = LoadSpec(
            url=f"{self.a.base_url}/api/v1/sessions/{self.sid}",
            headers={"X-API-Key": key},
            connections=args.connections,
            duration=seconds,
            warmup=1.0,
        )
        return measure_load(spec, args.loadgen)

    async def stop(self) -> None:
        await self.ca.aclose()
        await self.cb.aclose()
        self.a.kill()
        self.b.kill()


async def measure(stacks: list[Stack], key: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Alternates the stacks round by round (the machine is shared: a slow moment then hits both alike)."""
    reads: dict[str, list[LoadResult]] = {s.label: [] for s in stacks}
    interrupts: dict[str, list[float]] = {s.label: [] for s in stacks}
    rounds = max(1, args.rounds)
    for _ in range(rounds):
        for stack in stacks:
            reads[stack.label].append(await asyncio.to_thread(stack.read_load, key, args, args.duration / rounds))
            interrupts[stack.label] += await interrupt_latency(stack.ca, stack.cb, max(1, args.interrupts // rounds))
    out: dict[str, dict[str, Any]] = {}
    for stack in stacks:
        transport = transport_clients(stack.servers.valkey_url, cluster=stack.servers.valkey_cluster)
        try:
            await stream_roundtrip(transport, 10)  # warm-up
            rtt = await stream_roundtrip(transport, args.interrupts)
        finally:
            await close_clients(transport)
        parts = reads[stack.label]
        total = sum(r.requests for r in parts)
        out[stack.label] = {
            "read": {
                "rps": sum(r.rps for r in parts) / len(parts),
                # Per-round percentiles, averaged (weighted by requests): the rounds are short and alike.
                "p50_ms": sum(r.p50_ms * r.requests for r in parts) / max(1, total),
                "p99_ms": sum(r.p99_ms * r.requests for r in parts) / max(1, total),
                "errors": sum(r.errors for r in parts),
                "requests": total,
                "generator": parts[0].generator,
                "rounds": [r.as_dict() for r in parts],
            },
            "interrupt_latency": summary(interrupts[stack.label]),
            "stream_roundtrip": summary(rtt),
        }
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of read load per backend")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--interrupts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help="alternations single/cluster (the machine is shared)")
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
        clustered_servers = dataclasses.replace(servers, valkey_url=cluster.url, valkey_cluster=True, _valkey_dir=None)
        stacks = [await Stack.start(servers, "single", key), await Stack.start(clustered_servers, "cluster", key)]
        try:
            results = await measure(stacks, key, args)
        finally:
            for stack in stacks:
                await stack.stop()
        single, clustered = results["single"], results["cluster"]
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
