"""Unauthenticated floods (issue 16): what a flood of wrong API keys from one client costs everyone else.

    uv run python -m scripts.bench.auth_flood [--quick] [--out bench-results]

One Granian instance with one worker (AUTH_FAILURES_PER_MINUTE at its default, 20). Four keep-alive
connections read a cached session (a Valkey hit) alone, then while 64 connections from the same client send

  * requests with no key at all (the floor: a 401 that costs nothing), then
  * a distinct random wrong key in every request (each one a key this instance has never seen).

Rows: the legitimate p50 during the wrong-key flood vs alone, the legitimate p99 during the wrong-key flood vs
during the no-key flood (target <= 3x), and Postgres transactions per 1,000 wrong-key requests from
`pg_stat_database` (xact_commit + xact_rollback, everything the database did meanwhile; target <= 10).
Also part of `python -m scripts.bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from scripts.bench.loadgen import LoadResult, LoadSpec
from scripts.bench.sessions import measure
from tests.processes import GranianProcess
from tests.servers import TestServers

ROOT = Path(__file__).resolve().parents[2]
LEGIT_CONNECTIONS = 4
FLOOD_CONNECTIONS = 64
# Backends report their transaction counts at most this long after going idle (PGSTAT_IDLE_INTERVAL, 10 s).
STATS_SETTLE = 11.0
XACTS = "SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()"


async def _xacts(pg: asyncpg.Connection) -> int:
    await pg.execute("SELECT pg_stat_clear_snapshot()")
    return int(await pg.fetchval(XACTS))


async def _together(legit: LoadSpec, flood: LoadSpec, loadgen: str) -> tuple[LoadResult, LoadResult]:
    results = await asyncio.gather(
        asyncio.to_thread(measure, legit, loadgen), asyncio.to_thread(measure, flood, loadgen)
    )
    return results[0], results[1]


async def auth_flood(servers: TestServers, key: str, *, quick: bool, loadgen: str = "python") -> dict[str, Any]:
    """Runs the three phases on a fresh one-worker instance; returns the figures (see `rows`)."""
    duration, warmup = (4.0, 1.0) if quick else (10.0, 2.0)
    logs = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    proc = GranianProcess.start(
        servers,
        f"bench-flood-{uuid.uuid4().hex[:6]}",
        logs,
        workers=1,
        RATE_LIMIT_PER_MINUTE="0",
        AUTH_FAILURES_PER_MINUTE="20",
        LOG_ACCESS="false",
        LITESTAR_DEBUG="false",
    )
    pg = await asyncpg.connect(servers.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, headers={"X-API-Key": key}, timeout=30) as c:
            sid = (await c.post("/api/v1/sessions", json={"title": "bench-flood"})).json()["id"]
            assert (await c.get(f"/api/v1/sessions/{sid}")).status_code == 200
        base = proc.base_url
        common = {"duration": duration, "warmup": warmup}
        legit = LoadSpec(
            url=f"{base}/api/v1/sessions/{sid}", headers={"X-API-Key": key}, connections=LEGIT_CONNECTIONS, **common
        )
        # The floods run through the legitimate load's warm-up too, with no warm-up of their own: every flood
        # request is counted, and so is every transaction it caused.
        flood_common = {"duration": duration + warmup, "warmup": 0.0, "connections": FLOOD_CONNECTIONS}
        no_key = LoadSpec(url=f"{base}/api/v1/sessions/{sid}", expect_status=401, **flood_common)
        wrong_keys = LoadSpec(
            url=f"{base}/api/v1/sessions/{sid}", expect_status=429, random_api_key=True, **flood_common
        )
        print("bench: auth flood: legitimate reads alone", file=sys.stderr)
        alone = measure(legit, loadgen)
        print("bench: auth flood: legitimate reads during a no-key flood", file=sys.stderr)
        await asyncio.sleep(max(0.0, STATS_SETTLE - duration - warmup))
        before_no_key = await _xacts(pg)
        during_no_key, no_key_flood = await _together(legit, no_key, loadgen)
        print("bench: auth flood: legitimate reads during a flood of distinct wrong keys", file=sys.stderr)
        await asyncio.sleep(STATS_SETTLE)
        before = await _xacts(pg)
        during_wrong, wrong_flood = await _together(legit, wrong_keys, loadgen)
        await asyncio.sleep(STATS_SETTLE)
        after = await _xacts(pg)
        if proc.proc.poll() is not None:
            raise RuntimeError("the flood instance exited during the run")
    finally:
        await pg.close()
        proc.kill()
    flood_requests = wrong_flood.requests
    xacts = after - before
    return {
        "alone": alone.as_dict(),
        "during_no_key_flood": during_no_key.as_dict(),
        "no_key_flood": no_key_flood.as_dict(),
        "during_wrong_key_flood": during_wrong.as_dict(),
        "wrong_key_flood": wrong_flood.as_dict(),
        "postgres_xacts_during_wrong_key_flood": xacts,
        "postgres_xacts_during_no_key_flood": before - before_no_key,
        "wrong_key_requests": flood_requests,
        "xacts_per_1000_wrong_key_requests": round(xacts * 1000 / flood_requests, 3) if flood_requests else None,
        "flood_seconds": duration + warmup,
    }


RowFields = tuple[str, float, str, str, float, str]


def rows(figures: dict[str, Any]) -> list[RowFields]:
    """The bench rows as `Row(*fields)` arguments (scripts/bench/__main__.py): measure, value, unit, baseline
    name, baseline value, note."""
    alone, no_key, wrong = figures["alone"], figures["during_no_key_flood"], figures["during_wrong_key_flood"]
    flood = figures["wrong_key_flood"]
    note = (
        f"{LEGIT_CONNECTIONS} legit connections, {FLOOD_CONNECTIONS} flooding; legit {wrong['rps']:.0f} req/s "
        f"(alone {alone['rps']:.0f}); flood {flood['rps']:.0f} req/s, statuses {flood['statuses']}"
    )
    return [
        (
            "legit read p50 during wrong-key flood",
            wrong["p50_ms"],
            "ms",
            "legit read p50 alone",
            alone["p50_ms"],
            note,
        ),
        (
            "legit read p99 during wrong-key flood",
            wrong["p99_ms"],
            "ms",
            "legit p99 during no-key flood",
            no_key["p99_ms"],
            "target: ratio <= 3",
        ),
        (
            "Postgres xacts / 1,000 wrong-key requests",
            figures["xacts_per_1000_wrong_key_requests"] or 0.0,
            "xacts",
            "target (at most)",
            10.0,
            f"{figures['postgres_xacts_during_wrong_key_flood']} xacts (all of Postgres, background included: "
            f"{figures['postgres_xacts_during_no_key_flood']} during the no-key flood) for "
            f"{figures['wrong_key_requests']} wrong-key requests in {figures['flood_seconds']:g} s",
        ),
    ]


async def _main(args: argparse.Namespace) -> int:
    from tests.instances import create_api_key, make_settings

    servers = TestServers.start()
    try:
        from app.asgi import build_alchemy_config
        from app.lib import migrations

        await migrations.upgrade(build_alchemy_config(make_settings(servers, "bench")))
        key = await create_api_key(servers, f"bench-{uuid.uuid4().hex[:8]}")
        figures = await auth_flood(servers, key, quick=args.quick)
    finally:
        servers.close()
    table = rows(figures)
    print()
    print(f"{'measure':<44}{'value':>12} {'unit':<7}{'baseline':<32}{'value':>12}{'ratio':>9}")
    for name, value, unit, baseline_name, baseline, _note in table:
        ratio = value / baseline if baseline else 0.0
        print(f"{name:<44}{value:>12.2f} {unit:<7}{baseline_name:<32}{baseline:>12.2f}{ratio:>9.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "rows": [
            dict(zip(("measure", "value", "unit", "baseline", "baseline_value", "note"), r, strict=True)) for r in table
        ],
        "figures": figures,
    }
    (args.out / "auth_flood.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out / 'auth_flood.json'}")
    p99_ok = table[1][1] <= 3.0 * table[1][4]
    xacts_ok = table[2][1] <= 10.0
    return 0 if p99_ok and xacts_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 s load phases instead of 10 s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
