"""The benchmark suite: every row is a ratio of two things measured in the same run.

    uv run python -m scripts.bench [--quick] [--workers 2] [--out bench-results]

Starts embedded PostgreSQL and Valkey (or TEST_DATABASE_URL / TEST_VALKEY_URL), applies migrations, creates an
API key, then measures, every row as value, baseline, ratio, target and pass/fail (load from `wrk` when it is
on PATH, else the Python generator in its own process):

  read path    cache-hit GET /sessions/{id} vs the limit app (bare Litestar + one Valkey GET of the cached
               bytes) and the bare Litestar app (fixed JSON), same Granian settings, one server at a time, at 1
               and 2 workers (scripts/bench/readpath.py, baselines.py); p99 vs its own p50; access log,
               request metrics and GC tuning off (each alone)
  then on two Granian instances A and B (`--workers` each):
  creates      POST /sessions at 16 connections vs raw asyncpg INSERT + Valkey SET at 16 (creates.py)
  latency      cache-hit / cache-miss GET and POST vs raw Valkey GET / asyncpg SELECT / INSERT + SET, p50
  contention   100 concurrent PATCHes of one session across A and B: total time vs 100 x uncontended PATCH
               p50, lost updates, lock timeouts, non-200 answers
  interrupt    POST /interrupt on B -> `done` on A's stream vs a raw Valkey XADD -> waiting XREAD BLOCK, p50/p99
  SSE          `burst 10000` through the API vs the demo backend in-process, events/s; a lone event's
               append -> client latency
  rejoin       GET /events with Last-Event-ID on B -> first event vs a raw Valkey XRANGE, p50
  scale        10, 100, 1000 live `sleep` runs over A and B, one follower each on the other instance:
               delivery p50/p99, CPU per 1,000 events, memory per run, Valkey/Postgres connections (scale.py)
  auth flood   on its own one-worker instance: legitimate cached reads alone / during floods (auth_flood.py)
  CLI          `agent-api --help` and `run --help`: wall time, no servers started, no files created

The exit status is 1 only for correctness failures (lost updates, errors), never for a missed timing target.
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
from scripts.bench.creates import app_creates, raw_creates
from scripts.bench.loadgen import read_response
from scripts.bench.readpath import read_path
from scripts.bench.runs import (
    burst_in_process,
    burst_through_api,
    close_clients,
    interrupt_latency,
    stream_roundtrip,
    transport_clients,
)
from scripts.bench.scale import live_runs
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
        status, _ = await self.exchange(method, path, body)
        return status

    async def exchange(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request; returns the status and the response body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status, keep_alive, answer = await read_response(self.reader)
        if not keep_alive:
            await self.close()
        return status, answer

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
    """One line of the table: a value next to its baseline; `target` bounds the ratio value / baseline
    (`at_most`: ratio <= target, else ratio >= target); no target: reported only."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    note: str = ""
    target: float | None = None
    at_most: bool = False

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else 0.0

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'<=' if self.at_most else '>='} {self.target:g}x"

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.at_most else self.ratio >= self.target

    @property
    def verdict(self) -> str:
        return {None: "-", True: "pass", False: "FAIL"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "measure": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "baseline": self.baseline_name,
            "baseline_value": round(self.baseline, 3),
            "ratio": round(self.ratio, 3),
            "target": self.target_text,
            "pass": self.passed,
            "note": self.note,
        }


def limit_row(name: str, value: float, unit: str, limit: float, *, note: str = "") -> Row:
    """An absolute target as a row: the baseline is the limit itself, the ratio must stay <= 1."""
    return Row(name, value, unit, f"target (at most {limit:g} {unit})", limit, note, target=1.0, at_most=True)


def zero_row(name: str, value: float, *, note: str = "") -> Row:
    """A count that must be 0 (lost updates, errors): baseline 1, ratio <= 0."""
    return Row(name, value, "count", "must be 0", 1.0, note, target=0.0, at_most=True)


async def contended_patches(
    a: str, b: str, key: str, sid: str, n: int
) -> tuple[list[float], dict[str, int], int, int, float]:
    """`n` concurrent PATCHes of one session, alternating between instances; returns latencies, statuses,
    lost updates (acknowledged writes whose version is not unique or not reflected), the final version and
    the total time from the first request to the last answer.

    Each PATCH goes over its own keep-alive connection, opened (and used once) before the clock starts, with the
    same raw client as the uncontended PATCH it is compared with: the total is the server's, not 100 TCP
    handshakes' or an HTTP library's."""
    path = f"/api/v1/sessions/{sid}"
    clients = [RawHTTP(a if i % 2 else b, key) for i in range(n)]
    try:
        await asyncio.gather(*(client.request("GET", path) for client in clients))
        _, answer = await clients[0].exchange("GET", path)
        before = json.loads(answer)["version"]

        async def one(i: int) -> tuple[float, int, bytes]:
            started = time.perf_counter()
            status, answer = await clients[i].exchange("PATCH", path, json.dumps({"title": f"patch {i}"}).encode())
            return time.perf_counter() - started, status, answer

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        total = time.perf_counter() - t0
        statuses: dict[str, int] = {}
        versions: list[int] = []
        for _, status, answer in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                versions.append(json.loads(answer)["version"])
        _, answer = await clients[0].exchange("GET", path)
        final = json.loads(answer)["version"]
    finally:
        for client in clients:
            await client.close()
    acknowledged = len(versions)
    # Every acknowledged PATCH must be its own committed version: distinct, and all of them counted.
    lost = (acknowledged - len(set(versions))) + max(0, acknowledged - (final - before))
    return [t for t, _, _ in results], statuses, lost, final, total


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
    print(f"{'measure':<46}{'value':>11} {'unit':<8}{'baseline':<36}{'value':>11}{'ratio':>8}  {'target':<9}{'result'}")
    for row in rows:
        print(
            f"{row.name:<46}{row.value:>11.2f} {row.unit:<8}{row.baseline_name:<36}{row.baseline:>11.2f}"
            f"{row.ratio:>8.2f}  {row.target_text:<9}{row.verdict}"
        )


async def lone_event_latency(client: httpx.AsyncClient, seconds: float) -> list[float]:
    """A `sleep` run's ticks, one every 100 ms, each alone in its write: the follower's clock at receipt minus
    the event's stream id (Valkey's clock at XADD, the same machine)."""
    samples: list[float] = []
    async with client.stream("POST", "/api/v1/query", json={"prompt": f"sleep {seconds:g}"}) as resp:
        async for ev in iter_sse(resp):
            if ev.comment or ev.id is None:
                continue
            received_ms = time.time() * 1000
            if ev.event == "message":
                samples.append(max(0.0, received_ms - int(ev.id.split("-")[0])) / 1000)
            if ev.event == "done":
                break
    return samples[1:]  # the first tick can share its write with the user turn


def cli_help_time() -> dict[str, Any]:
    """`agent-api --help` and `agent-api run --help` in an empty directory without server URLs: wall time,
    and whether they started servers or created files."""
    import subprocess

    executable = Path(sys.executable).parent / "agent-api"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "VALKEY_URL", "API_KEY", "LITESTAR_APP"}}
    out: dict[str, Any] = {}
    for args in (["--help"], ["run", "--help"]):
        with tempfile.TemporaryDirectory() as cwd:
            started = time.perf_counter()
            proc = subprocess.run(
                [str(executable), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
            )
            elapsed = time.perf_counter() - started
            out[" ".join(args)] = {
                "seconds": round(elapsed, 3),
                "exit_code": proc.returncode,
                "started_servers": "agent-api: started" in proc.stderr,
                "created_files": sorted(p.name for p in Path(cwd).iterdir()),
            }
    return out


async def run(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    n_seq = 50 if quick else 1000
    n_interrupts = 10 if quick else 200
    burst = 10_000
    duration, warmup = (1.0, 0.5) if quick else (10.0, 3.0)
    scale_runs = [10] if quick else args.scale_runs
    scale_seconds = 4.0 if quick else args.scale_seconds

    servers = TestServers.start()
    from app.asgi import build_alchemy_config
    from app.lib import migrations

    await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
    key = await create_api_key(servers, f"bench-{uuid.uuid4().hex[:8]}")
    logs = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {"RATE_LIMIT_PER_MINUTE": "0", "LITESTAR_DEBUG": "false"}
    rows: list[Row] = []
    figures: dict[str, Any] = {}
    dists: dict[str, list[float]] = {}
    correctness: list[str] = []
    vk = Valkey.from_url(servers.valkey_url)
    pg = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    proc_a = proc_b = None
    try:
        # -- the read path against the bare and limit apps, one server at a time --------------------------------
        setup = GranianProcess.start(servers, "bench-setup", logs, **env)
        try:
            async with httpx.AsyncClient(base_url=setup.base_url, headers={"X-API-Key": key}) as c:
                created = (await c.post("/api/v1/sessions", json={"title": "bench", "tags": ["bench"]})).json()
                sid = created["id"]
                assert (await c.get(f"/api/v1/sessions/{sid}")).status_code == 200
        finally:
            setup.kill()
        workers = [1] if quick else [1, 2]
        read = await read_path(
            servers,
            key,
            sid,
            workers=workers,
            duration=duration,
            warmup=warmup,
            connections=args.connections,
            rounds=1 if quick else args.rounds,
            loadgen=args.loadgen,
            logs=logs,
            toggles=not quick,
        )
        figures["read_path"] = read
        generator = read[f"app w{workers[0]}"]["generator"]
        for n in workers:
            app, limit, bare = read[f"app w{n}"], read[f"limit w{n}"], read[f"bare w{n}"]
            rows += [
                Row(f"cache-hit GET, {n} worker(s), req/s", app["rps"], "req/s", "limit app (1 Valkey GET)",
                    limit["rps"], target=0.6),
                Row(f"cache-hit GET, {n} worker(s), p99 vs own p50", app["p99_ms"], "ms", "its own p50",
                    app["p50_ms"], target=3.0, at_most=True),
                # The same ratio of the baselines, in the same rounds: how much tail the machine itself adds.
                Row(f"limit app, {n} worker(s), p99 vs own p50", limit["p99_ms"], "ms", "its own p50",
                    limit["p50_ms"]),
                Row(f"bare app, {n} worker(s), p99 vs own p50", bare["p99_ms"], "ms", "its own p50", bare["p50_ms"]),
                Row(f"limit app, {n} worker(s), req/s", limit["rps"], "req/s", "bare Litestar app", bare["rps"]),
                Row(f"cache-hit GET, {n} worker(s), vs bare app", app["rps"], "req/s", "bare Litestar app",
                    bare["rps"]),
            ]  # fmt: skip
            for name in ("app", "limit", "bare"):
                if read[f"{name} w{n}"]["errors"]:
                    correctness.append(f"read path {name} w{n}: {read[f'{name} w{n}']['errors']} errors")
        if not quick:
            on = read["app w1"]
            for case, label in (
                ("access log off", "access log off"),
                ("metrics off", "request metrics off"),
                ("log+metrics off", "access log + metrics off"),
                ("gc untuned", "GC untuned (no freeze, CPython thresholds)"),
                ("shortcut off", "read shortcut off (through the router)"),
            ):
                r = read[f"app w1 {case}"]
                rows.append(Row(f"cache-hit GET, 1 worker, {label}", r["rps"], "req/s", "all on (default)", on["rps"],
                                note=f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (on: {on['p50_ms']}, {on['p99_ms']})"))  # fmt: skip

        print(f"bench: starting two Granian instances with {args.workers} worker(s) each", file=sys.stderr)
        proc_a = GranianProcess.start(servers, "bench-a", logs, workers=args.workers, **env)
        proc_b = GranianProcess.start(servers, "bench-b", logs, workers=args.workers, **env)
        headers = {"X-API-Key": key}
        async with (
            httpx.AsyncClient(base_url=proc_a.base_url, headers=headers, timeout=60) as ca,
            httpx.AsyncClient(base_url=proc_b.base_url, headers=headers, timeout=60) as cb,
        ):
            assert (await ca.get(f"/api/v1/sessions/{sid}")).status_code == 200
            cache_key = session_key(sid)

            # -- creates at concurrency 16 vs raw INSERT + SET at 16 ------------------------------------------------
            print("bench: creates at concurrency 16", file=sys.stderr)
            owner = str(await pg.fetchval("SELECT owner_key_id FROM agent_session WHERE id = $1", uuid.UUID(sid)))
            app_create = await asyncio.to_thread(app_creates, proc_a.base_url, key, 16, duration, warmup, args.loadgen)
            raw_create_load = await asyncio.to_thread(
                raw_creates, servers.database_url, servers.valkey_url, owner, 16, duration
            )
            figures["creates_16"] = {"app": app_create, "raw": raw_create_load}
            rows.append(Row("POST /sessions x16, req/s", app_create["rps"], "req/s", "raw INSERT + SET x16",
                            raw_create_load["rps"], target=0.5,
                            note=f"p50 {app_create['p50_ms']} ms vs {raw_create_load['p50_ms']} ms"))  # fmt: skip
            if app_create["errors"]:
                correctness.append(f"creates: {app_create['errors']} errors")

            # -- sequential latencies next to their raw baselines ----------------------------------------------
            print("bench: sequential latencies", file=sys.stderr)
            http = RawHTTP(proc_a.base_url, key)
            read_path_url = f"/api/v1/sessions/{sid}"
            lat_hit = await sample(n_seq, lambda: http.request("GET", read_path_url))
            raw_get = await sample(n_seq, lambda: vk.get(cache_key))
            lat_miss = await sample(
                n_seq, lambda: http.request("GET", read_path_url), before=lambda: vk.delete(cache_key)
            )
            raw_select = await sample(
                n_seq, lambda: pg.fetchrow("SELECT * FROM agent_session WHERE id = $1", uuid.UUID(sid))
            )
            body = b'{"title":"bench","tags":["bench"]}'
            lat_create = await sample(n_seq, lambda: http.request("POST", "/api/v1/sessions", body))
            payload = json.dumps(created).encode()

            async def raw_insert_set() -> None:
                new_id = uuid.uuid4()
                now = datetime.now(UTC)
                await pg.execute(
                    "INSERT INTO agent_session (id, owner_key_id, title, status, tags, metadata, total_turns,"
                    " total_cost_usd, input_tokens, output_tokens, version, created_at, updated_at)"
                    " VALUES ($1, $2, 'bench', 'idle', $3, '{}'::jsonb, 0, 0, 0, 0, 1, $4, $4)",
                    new_id,
                    uuid.UUID(owner),
                    ["bench"],
                    now,
                )
                await vk.set(session_key(new_id), payload, ex=7200)

            raw_create = await sample(n_seq, raw_insert_set)
            lat_patch = await sample(
                max(20, n_seq // 4), lambda: http.request("PATCH", read_path_url, b'{"title":"uncontended"}')
            )
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
                latency_row("POST /sessions p50 (sequential)", lat_create, "raw INSERT + SET p50", raw_create),
            ]

            # -- contention: 100 concurrent PATCHes of one session across both instances -----------------------
            print("bench: 100 concurrent PATCHes across A and B", file=sys.stderr)
            # Warm-up: the waiters' blocking connections are opened once, as in any instance that has been up.
            await contended_patches(proc_a.base_url, proc_b.base_url, key, sid, 40)
            contended, statuses, lost, final, total = await contended_patches(
                proc_a.base_url, proc_b.base_url, key, sid, 100
            )
            serial_limit = 100 * pct(lat_patch, 0.5)
            figures["contended_patch"] = {
                **ms(contended),
                "statuses": statuses,
                "lost_updates": lost,
                "final_version": final,
                "total_s": round(total, 4),
                "serial_limit_s": round(serial_limit, 4),
            }
            dists["100 concurrent PATCHes"] = contended
            locked = statuses.get("409", 0)
            not_ok = 100 - statuses.get("200", 0)
            rows += [
                Row("100 concurrent PATCHes, total time", total * 1000, "ms", "100 x uncontended PATCH p50",
                    serial_limit * 1000, target=1.5, at_most=True, note=f"statuses {statuses}"),
                latency_row("100 concurrent PATCH p99 wait", contended, "uncontended PATCH p50", lat_patch, q=0.99),
                zero_row("100 concurrent PATCHes, lost updates", lost),
                zero_row("100 concurrent PATCHes, lock timeouts (409)", locked),
                zero_row("100 concurrent PATCHes, not 200", not_ok),
            ]  # fmt: skip
            if lost or not_ok:
                correctness.append(f"contended PATCHes: {lost} lost, statuses {statuses}")

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

            # -- SSE burst and a lone event -----------------------------------------------------------------------
            print(f"bench: SSE burst {burst}", file=sys.stderr)
            await burst_through_api(ca, 1000)
            api_rate = await burst_through_api(ca, burst)
            raw_rate = await burst_in_process(burst)
            lone = await lone_event_latency(ca, 1.5 if quick else 5.0)
            figures["burst"] = {
                "n": burst,
                "api_events_per_s": round(api_rate),
                "in_process_events_per_s": round(raw_rate),
            }
            figures["lone_event"] = ms(lone)
            dists["lone event append -> client"] = lone
            rows += [
                Row(f"SSE burst {burst} via API", api_rate, "events/s", "demo backend in-process", raw_rate,
                    target=0.25),
                limit_row("lone SSE event, append -> client p99", pct(lone, 0.99) * 1000, "ms", 5.0,
                          note=f"p50 {pct(lone, 0.5) * 1000:.2f} ms, {len(lone)} ticks"),
            ]  # fmt: skip

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

        # -- scale: many live runs, one follower each, over both instances --------------------------------------
        figures["scale"] = []
        for n in scale_runs:
            print(f"bench: scale, {n} live runs", file=sys.stderr)
            result = await live_runs(
                urls=(proc_a.base_url, proc_b.base_url),
                pids=(proc_a.proc.pid, proc_b.proc.pid),
                key=key,
                n=n,
                seconds=max(scale_seconds, 10.0 + n / 20),  # starting 1,000 runs took up to 55 s here
                valkey=vk,
                pg=pg,
            )
            figures["scale"].append(result)
            at_target = n >= 1000
            note = (
                f"p50 {result['latency_p50_ms']} ms; {result['events_in_window']} events in "
                f"{result['window_seconds']} s; valkey clients {result['valkey_clients']}, "
                f"postgres connections {result['postgres_connections']}"
            )
            rows += [
                Row(f"{n} live runs: delivery p99", result["latency_p99_ms"], "ms", "target (at most 100 ms)", 100.0,
                    note, target=1.0 if at_target else None, at_most=True),
                Row(f"{n} live runs: memory per run", result["kib_per_run"], "KiB", "target (at most 100 KiB)", 100.0,
                    f"RSS {result['rss_before_mib']} -> {result['rss_live_mib']} MiB",
                    target=1.0 if at_target else None, at_most=True),
                Row(f"{n} live runs: CPU per 1,000 events", result["cpu_ms_per_1000_events"], "ms",
                    "1,000 events x 100 ms apart", 100_000.0, "both instances' CPU over the window"),
                Row(f"{n} live runs: Valkey / Postgres connections", result["valkey_clients"], "conns",
                    "Postgres connections", result["postgres_connections"]),
                zero_row(f"{n} live runs: errors", result["errors"], note="; ".join(result["error_samples"])),
            ]  # fmt: skip
            if result["errors"]:
                correctness.append(f"scale {n}: {result['errors']} errors: {result['error_samples']}")
        for proc in (proc_a, proc_b):
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.instance_id} exited during the run")

        # -- unauthenticated floods (issue 16) ------------------------------------------------------------------
        figures["auth_flood"] = await auth_flood(servers, key, quick=quick, loadgen="python")
        rows += [Row(*fields) for fields in auth_flood_rows(figures["auth_flood"])]

        # -- the CLI's help ---------------------------------------------------------------------------------------
        figures["cli_help"] = cli_help_time()
        for command, r in figures["cli_help"].items():
            rows.append(limit_row(f"agent-api {command}: wall time", r["seconds"], "s", 10.0,
                                  note=f"servers started: {r['started_servers']}, files: {r['created_files']}"))  # fmt: skip
            if r["started_servers"] or r["created_files"] or r["exit_code"]:
                correctness.append(f"agent-api {command}: {r}")
    finally:
        await pg.close()
        await vk.aclose()
        for p in (proc_a, proc_b):
            if p is not None:
                p.kill()
        servers.close()

    print()
    print(
        f"Two Granian instances x {args.workers} worker(s), embedded Postgres + Valkey, {os.cpu_count()} CPUs shared "
        f"by servers and load ({'quick' if quick else 'full'} run; load: {generator})."
    )
    print_rows(rows)
    failed = [row.name for row in rows if row.passed is False]
    print(
        f"targets: {sum(row.passed is True for row in rows)} pass, {len(failed)} fail"
        + (f": {failed}" if failed else "")
    )
    print("correctness: " + ("ok (0 lost updates, no errors)" if not correctness else "; ".join(correctness)))

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m scripts.bench " + " ".join(args.argv),
        "quick": quick,
        "granian_workers_per_instance": args.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_generator": generator,
        "rows": [row.as_dict() for row in rows],
        "correctness_failures": correctness,
        "figures": figures,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(dists, args.out / "bench.png")
    print(f"written: {args.out / 'bench.json'}, {args.out / 'bench.png'}")
    return 1 if correctness else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: fewer samples, 1 s load phases")
    parser.add_argument("--workers", type=int, default=2, help="Granian workers per instance (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections for throughput rows")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the read-path cases")
    parser.add_argument("--scale-runs", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--scale-seconds", type=float, default=20.0, help="length of each scale run (sleep)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
