"""Many concurrent live runs across two instances, each followed by one SSE client on the other instance.

    uv run python -m scripts.bench.scale [--runs 10 100 1000] [--seconds 20] [--workers 1]

For each count N: N background runs (`POST /api/v1/runs`, prompt `sleep S`: a tick every 100 ms), started
alternately on A and B (32 starts in flight); each is followed (`GET /sessions/{id}/events`) on the other
instance, as soon as it started, by a light raw-socket SSE client (all in one child process). Measured in the
steady window (every follower connected, no run ended yet):

- delivery latency: the follower's clock at receipt minus the event's stream id (Valkey's clock at XADD, the
  same machine), for the events appended after its follower connected: p50 / p99;
- CPU per 1,000 delivered events: user+system CPU of both instances' process trees over a steady window,
  divided by the events delivered in it;
- memory per live run: growth of both instances' RSS (all their processes) from before the runs to the
  steady window, divided by N;
- Valkey clients (INFO) and Postgres connections (pg_stat_activity) at the steady window;
- errors: runs refused, followers that failed or did not end with `done`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_EVENT = re.compile(rb"id: (\d+)-\d+\r?\nevent: (\w+)")
_TICKS = 1 / 0.1  # demo `sleep`: ten ticks a second


@dataclass(frozen=True)
class FollowSpec:
    base_url: str
    session_id: str
    key: str


async def _follow(spec: FollowSpec, out: dict[str, Any], connected: asyncio.Event) -> None:
    parts = urlsplit(spec.base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        (
            f"GET /api/v1/sessions/{spec.session_id}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"X-API-Key: {spec.key}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    finally:
        connected.set()
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        out["errors"].append(f"follow {spec.session_id}: HTTP {status}")
        writer.close()
        return
    connected_ms = time.time() * 1000
    buffer = b""
    done = False
    try:
        while not done:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.time()
            now_ms = now * 1000
            buffer += chunk
            last = 0
            for match in _EVENT.finditer(buffer):
                last = match.end()
                appended_ms = int(match.group(1))
                if match.group(2) == b"done":
                    done = True
                if appended_ms > connected_ms:
                    out["received"].append(now)
                    out["latencies"].append(max(0.0, now_ms - appended_ms) / 1000)
            buffer = buffer[last:] if last else buffer[-4096:]
    finally:
        writer.close()
    if not done:
        out["errors"].append(f"follow {spec.session_id}: stream ended without done")


async def _start_and_follow(urls: tuple[str, str], key: str, n: int, seconds: float, queue: Any) -> dict[str, Any]:
    """Starts the runs (alternately on A and B) and follows each on the other instance as soon as it started;
    tells `queue` when every follower is connected; returns what the followers saw."""
    import httpx

    out: dict[str, Any] = {"latencies": [], "received": [], "errors": []}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    followers: list[asyncio.Task[None]] = []
    first_start: list[float] = []
    connections: list[asyncio.Event] = []
    gate = asyncio.Semaphore(32)
    async with (
        httpx.AsyncClient(base_url=urls[0], headers={"X-API-Key": key}, timeout=120, limits=limits) as ca,
        httpx.AsyncClient(base_url=urls[1], headers={"X-API-Key": key}, timeout=120, limits=limits) as cb,
    ):

        async def start(i: int) -> None:
            try:
                async with gate:
                    if not first_start:
                        first_start.append(time.time())
                    resp = await (ca if i % 2 == 0 else cb).post("/api/v1/runs", json={"prompt": f"sleep {seconds:g}"})
                    if resp.status_code != 202:
                        out["errors"].append(f"start {i}: {resp.status_code} {resp.text[:200]}")
                        return
                connected = asyncio.Event()
                spec = FollowSpec(urls[1] if i % 2 == 0 else urls[0], resp.json()["session_id"], key)
                followers.append(asyncio.create_task(guarded(spec, connected)))
                connections.append(connected)
            except Exception as exc:
                out["errors"].append(f"start {i}: {exc!r}")

        async def guarded(spec: FollowSpec, connected: asyncio.Event) -> None:
            try:
                await _follow(spec, out, connected)
            except Exception as exc:
                connected.set()
                out["errors"].append(f"follow {spec.session_id}: {exc!r}")

        await asyncio.gather(*(start(i) for i in range(n)))
        await asyncio.gather(*(c.wait() for c in connections))
        queue.put({"first_start": first_start[0] if first_start else time.time(), "connected": time.time()})
        await asyncio.gather(*followers)
    return out


def _child(urls: tuple[str, str], key: str, n: int, seconds: float, queue: Any) -> None:
    try:
        import uvloop

        out = uvloop.run(_start_and_follow(urls, key, n, seconds, queue))
    except ImportError:
        out = asyncio.run(_start_and_follow(urls, key, n, seconds, queue))
    queue.put(out)


# -- process figures ---------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                todo += [int(c) for c in children]
        except OSError:
            continue
    return pids


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except OSError:
            pass
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def live_runs(
    *,
    urls: tuple[str, str],
    pids: tuple[int, int],
    key: str,
    n: int,
    seconds: float,
    valkey: Any,
    pg: Any,
) -> dict[str, Any]:
    """N live runs spread over two instances, one follower each on the other instance. The runs are started
    and followed from a child process (raw sockets, its own event loop); the steady window begins once every
    follower is connected and ends a second before the first run ends."""
    rss_before = sum(rss_bytes(p) for p in pids)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(urls, key, n, seconds, queue), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    try:
        ready = await loop.run_in_executor(None, queue.get, True, seconds + 300)
        window_start = max(time.time(), ready["connected"]) + 0.5
        window_end = ready["first_start"] + seconds - 1.0
        start_seconds = ready["connected"] - ready["first_start"]
        cpu0 = cpu1 = 0.0
        t0 = t1 = time.time()
        rss_live, valkey_clients, pg_connections = rss_before, 0, 0
        if window_end - window_start >= 1.0:
            await asyncio.sleep(max(0.0, window_start - time.time()))
            cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.time()
            await asyncio.sleep(max(0.0, (window_end - t0) / 2))
            rss_live = sum(rss_bytes(p) for p in pids)
            valkey_clients = int((await valkey.info("clients"))["connected_clients"])
            pg_connections = int(
                await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            )
            await asyncio.sleep(max(0.0, window_end - time.time()))
            cpu1, t1 = sum(cpu_seconds(p) for p in pids), time.time()
        followed = await loop.run_in_executor(None, queue.get, True, seconds + 300)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    errors: list[str] = followed["errors"]
    if t1 - t0 < 1.0:
        errors.append(f"no steady window: starting {n} runs took {start_seconds:.1f} s of their {seconds:g} s")
    latencies: list[float] = followed["latencies"]
    in_window = sum(1 for t in followed["received"] if t0 <= t <= t1)
    return {
        "runs": n,
        "run_seconds": seconds,
        "start_seconds": round(start_seconds, 2),
        "events_measured": len(latencies),
        "latency_p50_ms": round(_pct(latencies, 0.5) * 1000, 2),
        "latency_p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
        "latency_max_ms": round(max(latencies, default=0.0) * 1000, 2),
        "window_seconds": round(t1 - t0, 2),
        "events_in_window": in_window,
        "events_expected_in_window": round(n * _TICKS * (t1 - t0)),
        "cpu_seconds_in_window": round(cpu1 - cpu0, 3),
        "cpu_ms_per_1000_events": round((cpu1 - cpu0) * 1000 / (in_window / 1000), 1) if in_window else 0.0,
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_live_mib": round(rss_live / 2**20, 1),
        "kib_per_run": round((rss_live - rss_before) / 1024 / max(1, n), 1),
        "valkey_clients": valkey_clients,
        "postgres_connections": pg_connections,
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile
    import uuid

    import asyncpg
    from valkey.asyncio import Valkey

    from tests.instances import create_api_key, make_settings
    from tests.processes import GranianProcess
    from tests.servers import TestServers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    servers = TestServers.start()
    procs: list[GranianProcess] = []
    try:
        from app.asgi import build_alchemy_config
        from app.lib import migrations

        await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
        key = await create_api_key(servers, f"bench-{uuid.uuid4().hex[:8]}")
        logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        env = {"RATE_LIMIT_PER_MINUTE": "0", "LOG_ACCESS": "false"}
        procs = [GranianProcess.start(servers, f"scale-{x}", logs, workers=args.workers, **env) for x in "ab"]
        vk = Valkey.from_url(servers.valkey_url)
        pg = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            for n in args.runs:
                result = await live_runs(
                    urls=(procs[0].base_url, procs[1].base_url),
                    pids=(procs[0].proc.pid, procs[1].proc.pid),
                    key=key,
                    n=n,
                    seconds=args.seconds,
                    valkey=vk,
                    pg=pg,
                )
                print(result)
        finally:
            await vk.aclose()
            await pg.close()
    finally:
        for p in procs:
            p.kill()
        servers.close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(asyncio.run(main()))
