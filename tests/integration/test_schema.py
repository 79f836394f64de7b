"""The migrated schema is the one the models describe, and the queries that must be indexed are."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql

from app.asgi import build_alchemy_config
from app.db.models import AgentSession
from app.domain.sessions.warming import most_recent_sessions
from tests.instances import make_settings
from tests.servers import TestServers


def schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, AgentSession.metadata))


async def test_migrations_create_exactly_the_models_schema(servers: TestServers) -> None:
    config = build_alchemy_config(make_settings(servers, "schema"))
    try:
        async with config.get_engine().connect() as conn:
            diff = await conn.run_sync(schema_diff)
    finally:
        await config.get_engine().dispose()
    # The tests' database is upgraded with `migrations/` (conftest): anything the models have that the
    # migrations do not (or the other way round) shows up here.
    assert diff == [], diff


async def test_cache_warming_reads_through_the_recency_index(servers: TestServers) -> None:
    config = build_alchemy_config(make_settings(servers, "schema"))
    query = most_recent_sessions(1000).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    try:
        async with config.get_engine().connect() as conn:
            # The tests' table is small, so the planner would rightly scan it: forbid that to see which index
            # the query can use at all.
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(row[0] for row in await conn.execute(text(f"EXPLAIN {query}")))
    finally:
        await config.get_engine().dispose()
    assert "ix_agent_session_recency" in plan, plan
    assert "Sort" not in plan.split("ix_agent_session_recency")[0], plan  # read in index order, not sorted
