"""Session endpoint throughput against a real Granian server, next to a bare Litestar handler of the same app.

    uv run python -m scripts.bench.sessions [--workers N] [--duration S] [--connections C] [--loadgen auto|wrk|python]

Starts embedded PostgreSQL + Valkey (or uses TEST_DATABASE_URL / TEST_VALKEY_URL), applies migrations,
creates an API key, launches `granian --interface asgi --factory app.asgi:create_app` (N workers), creates a
session, warms up, then measures requests/s and p50/p99 latency of:

  (a) GET  /health/live             - bare baseline: no auth, no I/O, a trivial JSON handler in the same app
  (b) GET  /api/v1/sessions/{id}    - auth + cache-aside read (a Valkey hit after the first request)
  (c) POST /api/v1/sessions         - auth + Postgres insert + cache write

Load comes from `wrk` when it is on PATH, else from a Python asyncio generator in its own process with
persistent keep-alive connections. Both the server and the load generator share this machine's cores, so
the absolute figures are a floor; the ratio (b)/(a) is the interesting number. Results are printed and
written to bench-results/sessions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from scripts.bench.loadgen import LoadResult, LoadSpec, run_in_process, run_wrk

ROOT = Path(__file__).resolve().parents[2]


def _settings(database_url: str, valkey_url: str) -> Any:
    from app.config.settings import AppSettings, DatabaseSettings, Settings, ValkeySettings

    return Settings(
        app=dataclasses.replace(AppSettings(), instance_id="bench-setup", api_key=""),
        db=dataclasses.replace(DatabaseSettings(), url=database_url, migrate_on_startup=False),
        valkey=dataclasses.replace(ValkeySettings(), url=valkey_url),
    )


def prepare_database(database_url: str, valkey_url: str) -> str:
    """Applies migrations and creates a fresh API key; returns the key."""
    import secrets

    from app.asgi import build_alchemy_config
    from app.domain.keys.services import ApiKeyService
    from app.lib import migrations

    config = build_alchemy_config(_settings(database_url, valkey_url))
    migrations.upgrade_sync(config)

    async def create_key() -> str:
        try:
            async with config.get_session() as db:
                _, plaintext = await ApiKeyService(session=db).create_key(f"bench-{secrets.token_hex(4)}")
                return plaintext
        finally:
            await config.get_engine().dispose()

    return asyncio.run(create_key())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_granian(database_url: str, valkey_url: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    granian = shutil.which("granian", path=str(Path(sys.executable).parent)) or shutil.which("granian")
    command = [granian] if granian else [sys.executable, "-m", "granian"]
    command += [
        "--interface", "asgi", "--factory", "app.asgi:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "VALKEY_URL": valkey_url,
        "API_KEY": "",  # the bench key is created beforehand; no bootstrap-key writes at startup
        "DATABASE_MIGRATE_ON_STARTUP": "false",
        "INSTANCE_ID": "bench",
        "LITESTAR_DEBUG": "false",
        "DATABASE_ECHO": "false",
        "RATE_LIMIT_PER_MINUTE": "0",
    }
    print(f"bench: starting {' '.join(command)}", file=sys.stderr)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def _http(method: str, url: str, key: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"granian exited with {server.returncode} during startup")
        try:
            status, _ = _http("GET", f"{base}/health/ready")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("granian did not become ready in time")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def measure(spec: LoadSpec, loadgen: str) -> LoadResult:
    if spec.random_api_key:  # a new key per request: only the Python generator does that
        return run_in_process(spec)
    wrk = shutil.which("wrk")
    if loadgen == "wrk" or (loadgen == "auto" and wrk):
        if not wrk:
            raise SystemExit("--loadgen wrk: wrk is not on PATH")
        return run_wrk(spec, wrk)
    return run_in_process(spec)


def _row(label: str, result: LoadResult) -> str:
    return (
        f"{label:<44} {result.rps:>10.1f} {result.p50_ms:>9.2f} {result.p99_ms:>9.2f} "
        f"{result.requests:>9} {result.errors:>7}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="Granian worker processes (default 1)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per endpoint (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded warm-up per endpoint")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--skip-create", action="store_true", help="skip the POST /api/v1/sessions measurement")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "sessions.json")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.servers import TestServers

    print("bench: starting PostgreSQL and Valkey", file=sys.stderr)
    servers = TestServers.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        key = prepare_database(servers.database_url, servers.valkey_url)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_granian(servers.database_url, servers.valkey_url, port, args.workers)
        wait_ready(base, server)
        status, session = _http("POST", f"{base}/api/v1/sessions", key, {"title": "bench", "tags": ["bench"]})
        if status != 201:
            raise RuntimeError(f"creating the bench session failed: {status} {session}")
        status, _ = _http("GET", f"{base}/api/v1/sessions/{session['id']}", key)
        assert status == 200, status

        auth = {"X-API-Key": key}
        common = {"connections": args.connections, "duration": args.duration, "warmup": args.warmup}
        cases: list[tuple[str, str, LoadSpec]] = [
            ("bare", "GET /health/live (bare baseline, no auth)", LoadSpec(url=f"{base}/health/live", **common)),
            (
                "session_read",
                "GET /api/v1/sessions/{id} (cache hit)",
                LoadSpec(url=f"{base}/api/v1/sessions/{session['id']}", headers=auth, **common),
            ),
        ]
        if not args.skip_create:
            cases.append(
                (
                    "session_create",
                    "POST /api/v1/sessions",
                    LoadSpec(
                        url=f"{base}/api/v1/sessions",
                        method="POST",
                        headers={**auth, "Content-Type": "application/json"},
                        body=b'{"title":"bench","tags":["bench"]}',
                        expect_status=201,
                        **common,
                    ),
                )
            )
        results: dict[str, LoadResult] = {}
        for name, label, spec in cases:
            print(f"bench: {label}: {spec.warmup:g}s warm-up + {spec.duration:g}s", file=sys.stderr)
            results[name] = measure(spec, args.loadgen)
            if server.poll() is not None:
                raise RuntimeError(f"granian exited with {server.returncode} during the run")
    finally:
        if server is not None:
            stop_server(server)
        servers.close()

    ratio = results["session_read"].rps / results["bare"].rps if results["bare"].rps else 0.0
    generator = results["bare"].generator
    print()
    print(
        f"Granian {args.workers} worker(s), {args.connections} keep-alive connections, {args.duration:g}s per case "
        f"after {args.warmup:g}s warm-up; load: {generator}; {os.cpu_count()} CPUs shared by server and load."
    )
    print("Baseline = GET /health/live: a trivial JSON handler of the same app, same Granian config, no auth/I/O.")
    print(f"{'case':<44} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'requests':>9} {'errors':>7}")
    labels = {name: label for name, label, _ in cases}
    for name, result in results.items():
        print(_row(labels[name], result))
    print(f"ratio session read / bare: {ratio:.2f}")

    report = {
        "benchmark": "sessions",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m scripts.bench.sessions " + " ".join(sys.argv[1:] if argv is None else argv),
        "granian_workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_generator": generator,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "embedded_servers": servers.embedded,
        "baseline": "GET /health/live (trivial JSON handler in the same app, no auth)",
        "results": {name: {"label": labels[name], **result.as_dict()} for name, result in results.items()},
        "ratio_session_read_over_bare": round(ratio, 3),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    errors = sum(r.errors for r in results.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
