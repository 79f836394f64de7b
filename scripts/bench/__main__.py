"""The benchmark suite: every row is a ratio of two things measured in the same run.

    uv run python -m scripts.bench [--quick] [--workers 2] [--out bench-results]

Starts embedded PostgreSQL and Valkey (or TEST_DATABASE_URL / TEST_VALKEY_URL), applies migrations, creates an
API key and starts two Granian instances (A and B, `--workers` each) on them, then measures:

  throughput   cache-hit GET /sessions/{id} vs GET /health/live (a bare JSON handler in the same app), req/s
  latency      cache-hit GET /sessions/{id} vs a raw Valkey GET round trip, p50
  latency      cache-miss GET /sessions/{id} vs a raw asyncpg SELECT of the row, p50
  latency      POST /sessions vs a raw INSERT + SET, p50
  contention   100 concurrent PATCHes of one session across A and B: lost updates (must be 0),
               p99 wait vs an uncontended PATCH p50
  interrupt    POST /interrupt on B -> `done` on A's stream vs a raw Valkey XADD -> waiting XREAD BLOCK, p50/p99
  SSE          `burst 10000` through the API vs the demo backend in-process, events/s
  rejoin       GET /events with Last-Event-ID on B -> first event vs a raw Valkey XRANGE, p50
  auth flood   on its own one-worker instance: legitimate cached reads alone / during a flood of distinct
               wrong keys / during a no-key flood, p50 and p99; Postgres xacts per 1,000 wrong-key requests
               (scripts/bench/auth_flood.py; alone: `python -m scripts.bench.auth_flood`)

Writes <out>/bench.json (every figure and row) and <out>/bench.png (latency distributions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from valkey.asyncio import Valkey

from app.domain.sessions.valkey_keys import events_key, session_key
from scripts.bench.auth_flood import auth_flood
from scripts.bench.auth_flood import rows as auth_flood_rows
from scripts.bench.loadgen import LoadSpec, _read_response
from scripts.bench.runs import (
    burst_in_process,
    burst_through_api,
    close_clients,
    interrupt_latency,
    stream_roundtrip,
    transport_clients,
)
from scripts.bench.sessions import measure
from tests.helpers import iter_sse
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers

ROOT = Path(__file__).resolve().parents[2]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def latency_row(
    name: str,
    values: list[float],
    baseline_name: str,
    baseline: list[float],
    *,
    q: float = 0.5,
    baseline_q: float = 0.5,
    note: str = "",
) -> Row:
    """A table row of two latency samples (seconds) compared at their quantiles, in milliseconds."""
    return Row(name, pct(values, q) * 1000, "ms", baseline_name, pct(baseline, baseline_q) * 1000, note)


def ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 0.5) * 1000, 3),
        "p90_ms": round(pct(values, 0.9) * 1000, 3),
        "p99_ms": round(pct(values, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(values) * 1000, 3) if values else 0.0,
    }


class RawHTTP:
    """One keep-alive HTTP/1.1 connection with next to no client overhead, for sequential latency samples."""

    def __init__(self, base_url: str, key: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.key = key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status, keep_alive = await _read_response(self.reader)
        if not keep_alive:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def sample(
    n: int, call: Callable[[], Awaitable[Any]], before: Callable[[], Awaitable[Any]] | None = None
) -> list[float]:
    """`n` sequential timings of `call` (after `n // 10` discarded warm-up calls); `before` runs untimed."""
    out: list[float] = []
    for i in range(n + n // 10):
        if before is not None:
            await before()
        started = time.perf_counter()
        await call()
        if i >= n // 10:
            out.append(time.perf_counter() - started)
    return out


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "measure": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "baseline": self.baseline_name,
            "baseline_value": round(self.baseline, 3),
            "ratio": round(self.ratio, 3),
            "note": self.note,
        }


async def contended_patches(a: str, b: str, key: str, sid: str, n: int) -> tuple[list[float], dict[str, int], int, int]:
    """`n` concurrent PATCHes of one session, alternating between instances; returns latencies, statuses,
    lost updates (acknowledged writes whose version is not unique or not reflected) and the final version."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with (
        httpx.AsyncClient(base_url=a, headers={"X-API-Key": key}, timeout=60, limits=limits) as ca,
        httpx.AsyncClient(base_url=b, headers={"X-API-Key": key}, timeout=60, limits=limits) as cb,
    ):
        before = (await ca.get(f"/api/v1/sessions/{sid}")).json()["version"]

        async def one(i: int) -> tuple[float, httpx.Response]:
            client = ca if i % 2 else cb
            started = time.perf_counter()
            resp = await client.patch(f"/api/v1/sessions/{sid}", json={"title": f"patch {i}"})
            return time.perf_counter() - started, resp

        results = await asyncio.gather(*(one(i) for i in range(n)))
        statuses: dict[str, int] = {}
        versions: list[int] = []
        for _, resp in results:
            statuses[str(resp.status_code)] = statuses.get(str(resp.status_code), 0) + 1
            if resp.status_code == 200:
                versions.append(resp.json()["version"])
        final = (await ca.get(f"/api/v1/sessions/{sid}")).json()["version"]
    acknowledged = len(versions)
    # Every acknowledged PATCH must be its own committed version: distinct, and all of them counted.
    lost = (acknowledged - len(set(versions))) + max(0, acknowledged - (final - before))
    return [t for t, _ in results], statuses, lost, final


async def rejoin_latency(a: httpx.AsyncClient, b: httpx.AsyncClient, runs: int) -> list[float]:
    """Starts a long run on A, then rejoins it on B with Last-Event-ID = init's id: time to the first event."""
    sid = (await a.post("/api/v1/sessions", json={"title": "bench-rejoin"})).json()["id"]
    samples: list[float] = []
    async with a.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 60"}) as resp:
        events = iter_sse(resp).__aiter__()
        init_id = None
        async for ev in events:
            if ev.event == "init":
                init_id = ev.id
                break
        assert init_id is not None
        for _ in range(runs):
            started = time.perf_counter()
            async with b.stream("GET", f"/api/v1/sessions/{sid}/events", headers={"Last-Event-ID": init_id}) as follow:
                async for ev in iter_sse(follow):
                    if not ev.comment:
                        samples.append(time.perf_counter() - started)
                        break
        reply = await b.post(f"/api/v1/sessions/{sid}/interrupt")
        assert reply.status_code == 202, reply.text
        async for ev in events:
            if ev.event == "done":
                break
    return samples


def plot(distributions: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.get_cmap("tab20").colors
    for n, (label, values) in enumerate(distributions.items()):
        if not values:
            continue
        xs = sorted(v * 1000 for v in values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        style = "--" if label.startswith(("raw", "uncontended")) else "-"  # baselines dashed
        ax.plot(xs, ys, style, color=colors[n % len(colors)], label=f"{label} (p50 {pct(values, 0.5) * 1000:.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests at or below")
    ax.set_title("Agent API latency distributions (CDF), each next to its baseline")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_rows(rows: list[Row]) -> None:
    print(f"{'measure':<44}{'value':>12} {'unit':<9}{'baseline':<32}{'value':>12}{'ratio':>9}")
    for row in rows:
        print(
            f"{row.name:<44}{row.value:>12.2f} {row.unit:<9}{row.baseline_name:<32}{row.baseline:>12.2f}{row.ratio:>9.2f}"
        )


async def run(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    n_seq = 200 if quick else 1000
    n_interrupts = 30 if quick else 200
    burst = 10_000
    duration, warmup = (3.0, 1.0) if quick else (10.0, 3.0)

    servers = TestServers.start()
    from app.asgi import build_alchemy_config
    from app.lib import migrations

    await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
    key = await create_api_key(servers, f"bench-{uuid.uuid4().hex[:8]}")
    logs = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {"RATE_LIMIT_PER_MINUTE": "0", "LITESTAR_DEBUG": "false"}
    print(f"bench: starting two Granian instances with {args.workers} worker(s) each", file=sys.stderr)
    proc_a = GranianProcess.start(servers, "bench-a", logs, workers=args.workers, **env)
    proc_b = GranianProcess.start(servers, "bench-b", logs, workers=args.workers, **env)
    vk = Valkey.from_url(servers.valkey_url)
    pg = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    rows: list[Row] = []
    figures: dict[str, Any] = {}
    dists: dict[str, list[float]] = {}
    try:
        headers = {"X-API-Key": key}
        async with (
            httpx.AsyncClient(base_url=proc_a.base_url, headers=headers, timeout=60) as ca,
            httpx.AsyncClient(base_url=proc_b.base_url, headers=headers, timeout=60) as cb,
        ):
            created = (await ca.post("/api/v1/sessions", json={"title": "bench", "tags": ["bench"]})).json()
            sid = created["id"]
            assert (await ca.get(f"/api/v1/sessions/{sid}")).status_code == 200
            cache_key = session_key(sid)

            # -- throughput: cache hit vs bare handler (same app, same Granian) ------------------------------
            common: dict[str, Any] = {"connections": args.connections, "duration": duration, "warmup": warmup}
            print("bench: throughput (bare handler, cache-hit read)", file=sys.stderr)
            bare = measure(LoadSpec(url=f"{proc_a.base_url}/health/live", **common), args.loadgen)
            hit = measure(
                LoadSpec(url=f"{proc_a.base_url}/api/v1/sessions/{sid}", headers=headers, **common), args.loadgen
            )
            figures["throughput"] = {"bare": bare.as_dict(), "session_read_hit": hit.as_dict()}
            rows.append(Row("cache-hit GET /sessions/{id}", hit.rps, "req/s", "GET /health/live (bare)", bare.rps))

            # -- sequential latencies next to their raw baselines ----------------------------------------------
            print("bench: sequential latencies", file=sys.stderr)
            http = RawHTTP(proc_a.base_url, key)
            read_path = f"/api/v1/sessions/{sid}"
            lat_hit = await sample(n_seq, lambda: http.request("GET", read_path))
            raw_get = await sample(n_seq, lambda: vk.get(cache_key))
            lat_miss = await sample(n_seq, lambda: http.request("GET", read_path), before=lambda: vk.delete(cache_key))
            raw_select = await sample(
                n_seq, lambda: pg.fetchrow("SELECT * FROM agent_session WHERE id = $1", uuid.UUID(sid))
            )
            body = b'{"title":"bench","tags":["bench"]}'
            lat_create = await sample(n_seq, lambda: http.request("POST", "/api/v1/sessions", body))
            owner = await pg.fetchval("SELECT owner_key_id FROM agent_session WHERE id = $1", uuid.UUID(sid))
            payload = json.dumps(created).encode()

            async def raw_insert_set() -> None:
                new_id = uuid.uuid4()
                now = datetime.now(UTC)
                await pg.execute(
                    "INSERT INTO agent_session (id, owner_key_id, title, status, tags, metadata, total_turns,"
                    " total_cost_usd, input_tokens, output_tokens, version, created_at, updated_at)"
                    " VALUES ($1, $2, 'bench', 'idle', $3, '{}'::jsonb, 0, 0, 0, 0, 1, $4, $4)",
                    new_id,
                    owner,
                    ["bench"],
                    now,
                )
                await vk.set(session_key(new_id), payload, ex=7200)

            raw_create = await sample(n_seq, raw_insert_set)
            lat_patch = await sample(n_seq // 4, lambda: http.request("PATCH", read_path, b'{"title":"uncontended"}'))
            await http.close()
            for name, values in {
                "cache-hit GET": lat_hit,
                "raw Valkey GET": raw_get,
                "cache-miss GET": lat_miss,
                "raw asyncpg SELECT": raw_select,
                "POST /sessions": lat_create,
                "raw INSERT + SET": raw_create,
                "uncontended PATCH": lat_patch,
            }.items():
                figures[name] = ms(values)
                dists[name] = values
            rows += [
                latency_row("cache-hit GET /sessions/{id} p50", lat_hit, "raw Valkey GET p50", raw_get),
                latency_row("cache-miss GET /sessions/{id} p50", lat_miss, "raw asyncpg SELECT p50", raw_select),
                latency_row("POST /sessions p50", lat_create, "raw INSERT + SET p50", raw_create),
            ]

            # -- contention: 100 concurrent PATCHes of one session across both instances -----------------------
            print("bench: 100 concurrent PATCHes across A and B", file=sys.stderr)
            contended, statuses, lost, final = await contended_patches(proc_a.base_url, proc_b.base_url, key, sid, 100)
            figures["contended_patch"] = {
                **ms(contended),
                "statuses": statuses,
                "lost_updates": lost,
                "final_version": final,
            }
            dists["100 concurrent PATCHes"] = contended
            rows.append(
                latency_row(
                    "100 concurrent PATCH p99 wait",
                    contended,
                    "uncontended PATCH p50",
                    lat_patch,
                    q=0.99,
                    note=f"lost updates: {lost}; statuses {statuses}",
                )
            )

            # -- interrupt across instances vs XADD -> XREAD BLOCK ------------------------------------------------
            print("bench: interrupt latency B -> A", file=sys.stderr)
            await interrupt_latency(ca, cb, 3)
            interrupts = await interrupt_latency(ca, cb, n_interrupts)
            transport = transport_clients(servers.valkey_url, cluster=False)
            rtt = await stream_roundtrip(transport, n_interrupts)
            await close_clients(transport)
            figures["interrupt"] = ms(interrupts)
            figures["stream_roundtrip"] = ms(rtt)
            dists["interrupt B -> done on A"] = interrupts
            dists["raw XADD -> XREAD BLOCK"] = rtt
            rows += [
                latency_row("interrupt B -> done on A p50", interrupts, "XADD -> XREAD BLOCK p50", rtt),
                latency_row(
                    "interrupt B -> done on A p99", interrupts, "XADD -> XREAD BLOCK p99", rtt, q=0.99, baseline_q=0.99
                ),
            ]

            # -- SSE burst ----------------------------------------------------------------------------------------
            print(f"bench: SSE burst {burst}", file=sys.stderr)
            await burst_through_api(ca, 1000)
            api_rate = await burst_through_api(ca, burst)
            raw_rate = await burst_in_process(burst)
            figures["burst"] = {
                "n": burst,
                "api_events_per_s": round(api_rate),
                "in_process_events_per_s": round(raw_rate),
            }
            rows.append(Row(f"SSE burst {burst} via API", api_rate, "events/s", "demo backend in-process", raw_rate))

            # -- rejoin --------------------------------------------------------------------------------------------
            print("bench: rejoin latency", file=sys.stderr)
            rejoins = await rejoin_latency(ca, cb, n_interrupts)
            probe_sid = (await ca.post("/api/v1/sessions", json={})).json()["id"]
            async with ca.stream("POST", f"/api/v1/sessions/{probe_sid}/resume", json={"prompt": "hi there"}) as r:
                await r.aread()
            stream = events_key(probe_sid)
            raw_xrange = await sample(n_interrupts, lambda: vk.xrange(stream, "(0-1", "+", count=1))
            figures["rejoin"] = ms(rejoins)
            figures["raw_xrange"] = ms(raw_xrange)
            dists["rejoin on B -> first event"] = rejoins
            dists["raw XRANGE"] = raw_xrange
            rows.append(latency_row("rejoin (Last-Event-ID) -> first event p50", rejoins, "raw XRANGE p50", raw_xrange))
            for proc in (proc_a, proc_b):
                if proc.proc.poll() is not None:
                    raise RuntimeError(f"{proc.instance_id} exited during the run")

            # -- unauthenticated floods (issue 16) ------------------------------------------------------------------
            figures["auth_flood"] = await auth_flood(servers, key, quick=quick, loadgen="python")
            rows += [Row(*fields) for fields in auth_flood_rows(figures["auth_flood"])]
    finally:
        await pg.close()
        await vk.aclose()
        proc_a.kill()
        proc_b.kill()
        servers.close()

    print()
    print(
        f"Two Granian instances x {args.workers} worker(s), embedded Postgres + Valkey, {os.cpu_count()} CPUs shared "
        f"by servers and load ({'quick' if quick else 'full'} run; load: {bare.generator})."
    )
    print_rows(rows)
    print(
        f"lost updates in 100 concurrent PATCHes: {figures['contended_patch']['lost_updates']} (must be 0); "
        f"statuses {figures['contended_patch']['statuses']}"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "granian_workers_per_instance": args.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_generator": bare.generator,
        "rows": [row.as_dict() for row in rows],
        "figures": figures,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(dists, args.out / "bench.png")
    print(f"written: {args.out / 'bench.json'}, {args.out / 'bench.png'}")
    return 1 if figures["contended_patch"]["lost_updates"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: fewer samples, 3 s load phases")
    parser.add_argument("--workers", type=int, default=2, help="Granian workers per instance (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections for throughput rows")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
