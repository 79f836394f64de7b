"""Real Granian server processes running the app, for tests that need a process to die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import TestServers, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GranianProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    instance_id: str
    log_path: Path

    @classmethod
    def start(
        cls, servers: TestServers, instance_id: str, log_dir: Path, workers: int = 1, *, cli: bool = False, **env: str
    ) -> GranianProcess:
        """`cli=True` starts it the way the Dockerfile does, `agent-api run` (litestar-granian supervising a
        Granian child), instead of Granian directly."""
        port = free_port()
        log_path = log_dir / f"{instance_id}.log"
        environ = {
            **os.environ,
            "DATABASE_URL": servers.database_url,
            "VALKEY_URL": servers.valkey_url,
            "VALKEY_CLUSTER": "true" if servers.valkey_cluster else "false",
            "DATABASE_MIGRATE_ON_STARTUP": "false",
            "INSTANCE_ID": instance_id,
            "API_KEY": "",
            "AUTH_FAILURES_PER_MINUTE": "0",  # all tests share 127.0.0.1 and one Valkey (see tests/instances.py)
            **env,
        }
        with open(log_path, "wb") as log:
            command = (
                [sys.executable, "-m", "app", "run", "--host", "127.0.0.1", "--port", str(port), "--wc", str(workers)]
                if cli
                else [
                    sys.executable,
                    "-m",
                    "granian",
                    "--interface",
                    "asgi",
                    "--factory",
                    "app.asgi:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--no-ws",
                ]
            )
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(proc=proc, base_url=f"http://127.0.0.1:{port}", instance_id=instance_id, log_path=log_path)
        server.wait_ready()
        return server

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"granian exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health/live", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"granian not ready:\n{self.log_path.read_text()[-3000:]}")

    def signal_main(self, sig: signal.Signals) -> None:
        """Signals only the top process, as `docker stop` does (its children hear from it)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hooks run, like a crashed host."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)
