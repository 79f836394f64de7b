"""The cache-hit read path against truly bare baselines on the same Granian settings, one server at a time.

    uv run python -m scripts.bench.readpath [--workers 1 2] [--duration 10] [--rounds 3] [--loadgen auto]

For each worker count: the app (`GET /api/v1/sessions/{id}`, a cache hit), the limit app (one Valkey GET of
the same cached bytes, scripts/bench/baselines.py) and the bare app (fixed JSON), and at the first worker
count the app with access logging off, with request metrics off, with both off, without the GC tuning
(no freeze, CPython's thresholds) and without the read shortcut (app/domain/sessions/read_shortcut.py).
Servers run one at a time (the others are stopped) and the cases are interleaved over `--rounds`; each figure
is the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from scripts.bench.baselines import baseline_process
from scripts.bench.loadgen import LoadResult, LoadSpec
from scripts.bench.sessions import measure
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers

APP_ENV = {"RATE_LIMIT_PER_MINUTE": "0", "LITESTAR_DEBUG": "false"}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # app | limit | bare
    workers: int
    env: tuple[tuple[str, str], ...] = ()


def cases(workers: list[int], toggles: bool) -> list[Case]:
    out: list[Case] = []
    for n in workers:
        out += [Case(f"app w{n}", "app", n), Case(f"limit w{n}", "limit", n), Case(f"bare w{n}", "bare", n)]
    if toggles:
        n = workers[0]
        out += [
            Case(f"app w{n} access log off", "app", n, (("LOG_ACCESS", "false"),)),
            Case(f"app w{n} metrics off", "app", n, (("METRICS_ENABLED", "false"),)),
            Case(f"app w{n} log+metrics off", "app", n, (("LOG_ACCESS", "false"), ("METRICS_ENABLED", "false"))),
            Case(f"app w{n} gc untuned", "app", n, (("GC_FREEZE", "false"), ("GC_THRESHOLDS", "-"))),
            Case(f"app w{n} shortcut off", "app", n, (("READ_SHORTCUT", "false"),)),
        ]
    return out


def _median(results: list[LoadResult]) -> LoadResult:
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


async def read_path(
    servers: TestServers,
    key: str,
    sid: str,
    *,
    workers: list[int],
    duration: float,
    warmup: float,
    connections: int,
    rounds: int,
    loadgen: str,
    logs: Path,
    toggles: bool = True,
    extra_env: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Median-of-rounds wrk (or Python) results per case; the session `sid` must be cached."""
    results: dict[str, list[LoadResult]] = {}
    common: dict[str, Any] = {"connections": connections, "duration": duration, "warmup": warmup}
    path = f"/api/v1/sessions/{sid}"
    for round_ in range(rounds):
        for case in cases(workers, toggles):
            print(f"bench: read path round {round_ + 1}/{rounds}: {case.name}", file=sys.stderr)
            if case.kind == "app":
                env = {**APP_ENV, **(extra_env or {}), **dict(case.env)}
                proc = GranianProcess.start(servers, f"read-{uuid.uuid4().hex[:6]}", logs, workers=case.workers, **env)
                base, stop = proc.base_url, proc.kill
                async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}) as client:
                    assert (await client.get(path)).status_code == 200
                url = base + path
            else:
                factory = "create_limit_app" if case.kind == "limit" else "create_bare_app"
                probe = path if case.kind == "limit" else "/bare"
                bp = baseline_process(
                    factory, workers=case.workers, valkey_url=servers.valkey_url, log_dir=logs, probe=probe
                )
                base, stop = bp.base_url, bp.stop
                url = base + probe
            try:
                spec = LoadSpec(url=url, headers={"X-API-Key": key}, **common)
                results.setdefault(case.name, []).append(await asyncio.to_thread(measure, spec, loadgen))
            finally:
                stop()
    out: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        best = _median(runs)
        out[name] = {**best.as_dict(), "rounds_rps": [r.rps for r in runs]}
    return out


def summarise(figures: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"{'case':<30}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99/p50':>9}{'errors':>8}  rounds"]
    for name, r in figures.items():
        ratio = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else 0.0
        lines.append(
            f"{name:<30}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{ratio:>9.2f}{r['errors']:>8}  "
            + ", ".join(f"{x:.0f}" for x in r["rounds_rps"])
        )
    return lines


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--no-toggles", action="store_true", help="skip the access-log / metrics off cases")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the app instances")
    parser.add_argument("--out", type=Path, default=Path("bench-results/readpath.json"))
    args = parser.parse_args(argv)
    servers = TestServers.start()
    try:
        from app.asgi import build_alchemy_config
        from app.lib import migrations

        await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
        key = await create_api_key(servers, f"bench-{uuid.uuid4().hex[:8]}")
        logs = Path(tempfile.mkdtemp(prefix="bench-read-"))
        setup = GranianProcess.start(servers, "read-setup", logs, **APP_ENV)
        try:
            async with httpx.AsyncClient(base_url=setup.base_url, headers={"X-API-Key": key}) as client:
                created = await client.post("/api/v1/sessions", json={"title": "bench", "tags": ["bench"]})
                sid = created.json()["id"]
                assert (await client.get(f"/api/v1/sessions/{sid}")).status_code == 200
        finally:
            setup.kill()
        figures = await read_path(
            servers,
            key,
            sid,
            workers=args.workers,
            duration=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            rounds=args.rounds,
            loadgen=args.loadgen,
            logs=logs,
            toggles=not args.no_toggles,
            extra_env=dict(item.split("=", 1) for item in args.env),
        )
    finally:
        servers.close()
    print("\n".join(summarise(figures)))
    for n in args.workers:
        app, limit = figures[f"app w{n}"], figures[f"limit w{n}"]
        print(f"w{n}: app / limit = {app['rps'] / limit['rps']:.2f} (target >= 0.6)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if statistics.fmean(r["errors"] for r in figures.values()) == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
