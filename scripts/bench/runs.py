"""Run benchmarks, each printed as a ratio against a baseline measured in the same script.

    uv run python -m scripts.bench.runs [--interrupts 200] [--burst 10000] [--first-events 100]

Starts embedded Postgres and Valkey and two real Granian processes (A and B) sharing them, then measures:
- interrupt latency: `POST /interrupt` on B → `done` on A's stream, p50/p99 over N runs, against a raw
  Valkey XADD → waiting XREAD BLOCK round trip (the transport floor: control messages go to the owning
  instance's stream);
- SSE throughput of `burst N` through the API (events/s) against the demo backend's raw rate in-process;
- time to first event (`POST /query` → `init`), p50/p99.
Writes bench-results/runs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from valkey.asyncio import Valkey

from app.agents.base import AgentRequest
from app.agents.demo import DemoBackend
from tests.helpers import iter_sse
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(values, 0.5) * 1000,
        "p99_ms": pct(values, 0.99) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
    }


async def interrupt_latency(ca: httpx.AsyncClient, cb: httpx.AsyncClient, runs: int) -> list[float]:
    sid = (await ca.post("/api/v1/sessions", json={"title": "bench-interrupt"})).json()["id"]
    samples: list[float] = []
    for _ in range(runs):
        async with ca.stream("POST", f"/api/v1/sessions/{sid}/resume", json={"prompt": "sleep 30"}) as resp:
            assert resp.status_code == 200, await resp.aread()
            events = iter_sse(resp).__aiter__()
            async for ev in events:
                if ev.event == "init":
                    break
            started = time.perf_counter()
            reply = await cb.post(f"/api/v1/sessions/{sid}/interrupt")
            assert reply.status_code == 202, reply.text
            async for ev in events:
                if ev.event == "done":
                    samples.append(time.perf_counter() - started)
                    assert ev.data == {"reason": "interrupted"}, ev.data
                    break
    return samples


async def stream_roundtrip(client: Any, count: int) -> list[float]:
    """The control transport's floor: XADD on one client → an XREAD BLOCK already waiting on another wakes up."""
    key = "agentapi:{bench:rtt}:control"
    last = "0-0"
    samples = []
    for i in range(count):
        reader = asyncio.ensure_future(client["blocking"].xread({key: last}, count=1, block=5000))
        await asyncio.sleep(0.002)  # the XREAD is parked server-side
        started = time.perf_counter()
        await client["main"].xadd(key, {"m": str(i)}, maxlen=1000, approximate=True)
        reply = await reader
        samples.append(time.perf_counter() - started)
        last = reply[0][1][-1][0]
    await client["main"].delete(key)
    return samples


def transport_clients(url: str, *, cluster: bool) -> dict[str, Any]:
    from valkey.asyncio.cluster import ValkeyCluster

    if cluster:
        return {"main": ValkeyCluster.from_url(url), "blocking": ValkeyCluster.from_url(url)}
    return {"main": Valkey.from_url(url), "blocking": Valkey.from_url(url)}


async def close_clients(clients: dict[str, Any]) -> None:
    for client in clients.values():
        await client.aclose()


async def burst_through_api(ca: httpx.AsyncClient, n: int) -> float:
    """Events per second of `burst n` streamed by `POST /query`, as received by a client that only splits the
    stream into lines and counts the events: the client shares the cores with the server, so it parses no JSON
    (tests.helpers.iter_sse does, for every event) and the figure is as much the server's as it can be."""
    started = time.perf_counter()
    count = 0
    last = b""
    pending = b""
    async with ca.stream("POST", "/api/v1/query", json={"prompt": f"burst {n}"}) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for chunk in resp.aiter_raw():
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            lines, pending = pending[:cut], pending[cut:]
            # Every line starts the buffer or follows a newline; an event has exactly one `event:` line.
            found = lines.count(b"\nevent: ") + lines.startswith(b"event: ")
            if found:
                count += found
                start = lines.rfind(b"\nevent: ") + 1  # 0: the buffer's first line
                last = lines[start + 7 : lines.index(b"\n", start)].rstrip(b"\r")
            if last == b"done":
                break
    elapsed = time.perf_counter() - started
    assert last == b"done", last
    assert count == n + 4, count  # init + the user turn + n messages + result + done
    return count / elapsed


async def burst_in_process(n: int) -> float:
    run = DemoBackend().start(AgentRequest(session_id="s", run_id="r", prompt=f"burst {n}"))
    started = time.perf_counter()
    count = 0
    async for _ in run.events():
        count += 1
    return count / (time.perf_counter() - started)


async def first_event(ca: httpx.AsyncClient, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        async with ca.stream("POST", "/api/v1/query", json={"prompt": "hi"}) as resp:
            async for ev in iter_sse(resp):
                if ev.event == "init":
                    samples.append(time.perf_counter() - started)
                if ev.event == "done":
                    break
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interrupts", type=int, default=200)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--first-events", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench-results/runs.json"))
    args = parser.parse_args()

    servers = TestServers.start()
    from app.asgi import build_alchemy_config
    from app.lib import migrations

    await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
    key = await create_api_key(servers)
    logs = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    proc_a = GranianProcess.start(servers, "bench-a", logs)
    proc_b = GranianProcess.start(servers, "bench-b", logs)
    try:
        headers = {"X-API-Key": key}
        async with (
            httpx.AsyncClient(base_url=proc_a.base_url, headers=headers, timeout=60) as ca,
            httpx.AsyncClient(base_url=proc_b.base_url, headers=headers, timeout=60) as cb,
        ):
            await interrupt_latency(ca, cb, 5)  # warm-up
            interrupts = await interrupt_latency(ca, cb, args.interrupts)
            transport = transport_clients(servers.valkey_url, cluster=False)
            rtt = await stream_roundtrip(transport, args.interrupts)
            await close_clients(transport)
            await burst_through_api(ca, 1000)  # warm-up
            api_rate = await burst_through_api(ca, args.burst)
            raw_rate = await burst_in_process(args.burst)
            firsts = await first_event(ca, args.first_events)
    finally:
        proc_a.kill()
        proc_b.kill()
        servers.close()

    results: dict[str, Any] = {
        "interrupt_latency": summary(interrupts),
        "valkey_stream_roundtrip": summary(rtt),
        "burst": {"n": args.burst, "api_events_per_s": api_rate, "in_process_events_per_s": raw_rate},
        "time_to_first_event": summary(firsts),
    }
    i, r = results["interrupt_latency"], results["valkey_stream_roundtrip"]
    rows = [
        ("interrupt B→done on A p50 (ms)", i["p50_ms"], "XADD→XREAD BLOCK p50", r["p50_ms"], i["p50_ms"] / r["p50_ms"]),
        ("interrupt B→done on A p99 (ms)", i["p99_ms"], "XADD→XREAD BLOCK p99", r["p99_ms"], i["p99_ms"] / r["p99_ms"]),
        (f"SSE burst {args.burst} via API (ev/s)", api_rate, "demo backend in-process", raw_rate, api_rate / raw_rate),
    ]
    print(f"\n{'measure':<36}{'value':>12}  {'baseline':<26}{'value':>12}{'ratio':>9}")
    for name, value, base_name, base, ratio in rows:
        print(f"{name:<36}{value:>12.2f}  {base_name:<26}{base:>12.2f}{ratio:>9.3f}")
    f = results["time_to_first_event"]
    print(f"{'time to first event p50/p99 (ms)':<36}{f['p50_ms']:>12.2f}  {'':<26}{f['p99_ms']:>12.2f}")
    print(f"\ninterrupt p99 target 20 ms: {'met' if i['p99_ms'] <= 20 else 'NOT met'} ({i['p99_ms']:.2f} ms)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
