"""A small HTTP/1.1 load generator: fixed concurrency, fixed duration, persistent keep-alive connections.

Each connection is a raw asyncio stream that sends one request, reads the whole response (Content-Length or
chunked), records the latency and repeats until the deadline. Loopback use only; run it in its own process
(`run_in_process`) so it does not share an event loop or a GIL with anything else."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LoadSpec:
    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    connections: int = 32
    duration: float = 10.0
    warmup: float = 2.0
    expect_status: int = 200
    random_api_key: bool = False
    """Send a new random (wrong) `X-API-Key` with every request, e.g. a flood of guessed keys."""


@dataclass
class LoadResult:
    requests: int
    errors: int
    duration: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    connections: int
    generator: str = "python-asyncio"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# Replaced by a fresh random key in each request of a `random_api_key` load: the same length as a real key.
_KEY_PLACEHOLDER = b"aak_" + b"X" * 43


def _random_key() -> bytes:
    return b"aak_" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=")


def _request_bytes(spec: LoadSpec) -> tuple[str, int, bytes]:
    parts = urlsplit(spec.url)
    if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"loopback http:// URLs only, not {spec.url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Host": parts.netloc, "Connection": "keep-alive", "Accept": "application/json", **spec.headers}
    if spec.random_api_key:
        headers["X-API-Key"] = _KEY_PLACEHOLDER.decode()
    if spec.body or spec.method in {"POST", "PUT", "PATCH"}:
        headers["Content-Length"] = str(len(spec.body))
    head = f"{spec.method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + spec.body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one response; returns (status, keep_alive)."""
    status, keep_alive, _ = await read_response(reader)
    return status, keep_alive


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Reads one response; returns (status, keep_alive, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    body = b""
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            parts.append((await reader.readexactly(size + 2))[:size])
            if size == 0:
                break
        body = b"".join(parts)
    elif length:
        body = await reader.readexactly(length)
    elif length is None and status not in (204, 304) and status >= 200:
        keep_alive = False  # body delimited by close: not expected from our server
    return status, keep_alive, body


async def _connection(
    host: str,
    port: int,
    payload: bytes,
    until: float,
    latencies: list[float],
    statuses: dict[int, int],
    random_key: bool = False,
) -> int:
    errors = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    clock = time.perf_counter
    while clock() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            request = payload.replace(_KEY_PLACEHOLDER, _random_key()) if random_key else payload
            started = clock()
            writer.write(request)
            status, keep_alive = await _read_response(reader)
            latencies.append(clock() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if not keep_alive:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return errors


async def _phase(spec: LoadSpec, seconds: float) -> tuple[list[float], dict[int, int], int, float]:
    host, port, payload = _request_bytes(spec)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    until = started + seconds
    errors = await asyncio.gather(
        *(
            _connection(host, port, payload, until, latencies, statuses, spec.random_api_key)
            for _ in range(spec.connections)
        )
    )
    return latencies, statuses, sum(errors), time.perf_counter() - started


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index] * 1000


async def run_load(spec: LoadSpec) -> LoadResult:
    if spec.warmup > 0:
        await _phase(spec, spec.warmup)
    latencies, statuses, errors, elapsed = await _phase(spec, spec.duration)
    latencies.sort()
    unexpected = sum(n for status, n in statuses.items() if status != spec.expect_status)
    return LoadResult(
        requests=len(latencies),
        errors=errors + unexpected,
        duration=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(_percentile(latencies, 0.50), 3),
        p90_ms=round(_percentile(latencies, 0.90), 3),
        p99_ms=round(_percentile(latencies, 0.99), 3),
        max_ms=round(latencies[-1] * 1000, 3) if latencies else 0.0,
        statuses={str(k): v for k, v in sorted(statuses.items())},
        connections=spec.connections,
    )


def _run_sync(spec: LoadSpec) -> dict[str, object]:
    try:
        import uvloop

        return uvloop.run(run_load(spec)).as_dict()
    except ImportError:
        return asyncio.run(run_load(spec)).as_dict()


def run_in_process(spec: LoadSpec) -> LoadResult:
    """Runs the load from a fresh (spawned) process and returns its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        data = pool.submit(_run_sync, spec).result(timeout=spec.warmup + spec.duration + 60)
    return LoadResult(**data)  # type: ignore[arg-type]


# -- wrk ---------------------------------------------------------------------------------------------------
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _wrk_script(spec: LoadSpec) -> str:
    lines = [f"wrk.method = {json.dumps(spec.method)}"]
    if spec.body:
        lines.append(f"wrk.body = {json.dumps(spec.body.decode())}")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in spec.headers.items()]
    return "\n".join(lines) + "\n"


def run_wrk(spec: LoadSpec, wrk: str, threads: int = 1) -> LoadResult:
    """Runs the same load with wrk (`--latency`); warm-up is a separate, discarded wrk run."""
    _request_bytes(spec)  # same loopback-only check
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(spec))
    try:
        base = [wrk, f"-t{threads}", f"-c{spec.connections}", "--latency", "-s", script.name]
        if spec.warmup > 0:
            subprocess.run(
                [*base, f"-d{max(1, round(spec.warmup))}s", spec.url],
                capture_output=True,
                check=True,
                timeout=spec.warmup + 30,
            )
        out = subprocess.run(
            [*base, f"-d{max(1, round(spec.duration))}s", spec.url],
            capture_output=True,
            text=True,
            check=True,
            timeout=spec.duration + 30,
        ).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    percentiles = {m.group(1): _wrk_ms(m.group(2)) for m in re.finditer(r"^\s+(50|90|99)%\s+(\S+)$", out, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    max_lat = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
    # wrk counts only non-2xx/3xx answers as failures; the expected statuses here are 200 and 201.
    unexpected = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    if not (total and rps):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    return LoadResult(
        requests=int(total.group(1)),
        errors=socket_errors + (int(unexpected.group(1)) if unexpected else 0),
        duration=round(_wrk_ms(total.group(2) + total.group(3)) / 1000, 3),
        rps=round(float(rps.group(1)), 1),
        p50_ms=round(percentiles.get("50", 0.0), 3),
        p90_ms=round(percentiles.get("90", 0.0), 3),
        p99_ms=round(percentiles.get("99", 0.0), 3),
        max_ms=round(_wrk_ms(max_lat.group(1)), 3) if max_lat else 0.0,
        statuses={},
        connections=spec.connections,
        generator=f"wrk -t{threads}",
    )
