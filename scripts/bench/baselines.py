"""Truly bare baselines, served by Granian with the same settings as the app (`baseline_process`):

- `bare`: a Litestar app with one route answering a fixed JSON body: no middleware, no plugins, no I/O;
- `limit`: a Litestar app with one route that does one Valkey GET of a session's cached bytes and returns
  them: the physical limit of a cache-hit `GET /api/v1/sessions/{id}` in this stack (same framework, same
  server, same Valkey round trip through the app's own fastest GET, `PipelinedGetter`), without
  authentication, logging, metrics, validation or serialisation.

Both get the app's garbage-collector tuning after startup (GC_FREEZE / GC_THRESHOLDS, app.lib.gc_tuning),
so the comparison is of the request path only.

    granian --interface asgi --factory scripts.bench.baselines:create_bare_app ...
    BASELINE_VALKEY_URL=redis://... granian --interface asgi --factory scripts.bench.baselines:create_limit_app ...

The limit app's route is `/api/v1/sessions/{session_id}`, the same path shape as the real one, so a load
generator sends byte-for-byte the same request (the `X-API-Key` header is ignored).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from litestar import Litestar, Response, get

from app.config.settings import AppSettings
from app.lib import gc_tuning
from app.lib.valkey.pipelined_get import PipelinedGetter
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
_BODY = b'{"status":"ok"}'


def _tune_gc() -> None:
    settings = AppSettings()
    gc_tuning.tune_after_startup(
        freeze=settings.gc_freeze, thresholds=gc_tuning.parse_thresholds(settings.gc_thresholds)
    )


def create_bare_app() -> Litestar:
    @get("/bare", sync_to_thread=False)
    def bare() -> Response[bytes]:
        return Response(_BODY, media_type="application/json")

    return Litestar(route_handlers=[bare], openapi_config=None, logging_config=None, on_startup=[_tune_gc])


def create_limit_app() -> Litestar:
    getter = PipelinedGetter(os.environ["BASELINE_VALKEY_URL"])

    @get("/api/v1/sessions/{session_id:str}")
    async def read(session_id: str) -> Response[bytes]:
        cached = await getter.get(f"agentapi:{{{session_id}}}:session")
        return Response(cached or b"null", media_type="application/json")

    return Litestar(
        route_handlers=[read],
        openapi_config=None,
        logging_config=None,
        on_startup=[_tune_gc],
        on_shutdown=[getter.aclose],
    )


@dataclass
class BaselineProcess:
    proc: subprocess.Popen[bytes]
    base_url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def baseline_process(factory: str, *, workers: int, valkey_url: str, log_dir: Path, probe: str) -> BaselineProcess:
    """Starts `scripts.bench.baselines:<factory>` under Granian exactly as tests.processes.GranianProcess
    starts the app (same interface, loop, workers, `--no-ws`)."""
    port = free_port()
    log_path = log_dir / f"baseline-{factory}.log"
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", f"scripts.bench.baselines:{factory}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-ws",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "BASELINE_VALKEY_URL": valkey_url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = BaselineProcess(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline {factory} exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(server.base_url + probe, timeout=0.5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"baseline {factory} not ready:\n{log_path.read_text()[-3000:]}")
