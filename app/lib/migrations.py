"""Apply Alembic migrations from inside a running app (in a worker thread: Alembic's env runs its own loop)."""

from __future__ import annotations

import anyio
from advanced_alchemy.alembic.commands import AlembicCommands
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig


def upgrade_sync(config: SQLAlchemyAsyncConfig, revision: str = "head") -> None:
    AlembicCommands(sqlalchemy_config=config).upgrade(revision=revision)


async def upgrade(config: SQLAlchemyAsyncConfig, revision: str = "head") -> None:
    await anyio.to_thread.run_sync(upgrade_sync, config, revision)
