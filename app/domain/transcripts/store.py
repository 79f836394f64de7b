"""`PostgresSessionStore`: the Claude SDK's `SessionStore` protocol on Postgres.

The SDK mirrors every transcript line the CLI writes into `append()`, and on resume `load()`s the transcript
into a temporary config dir for the CLI, so a session started on one instance resumes on any other. The
backend gets this store as an opaque object; the class needs neither the SDK nor Litestar."""

from __future__ import annotations

from typing import Any

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert

from app.db.models import AgentTranscriptEntry

Entry = dict[str, Any]
T = AgentTranscriptEntry


class PostgresSessionStore:
    """`namespace` prefixes every project key (isolates tenants, or tests sharing one database)."""

    def __init__(self, alchemy: SQLAlchemyAsyncConfig, namespace: str = "") -> None:
        self.alchemy = alchemy
        self.namespace = namespace

    def _project(self, key: Any) -> str:
        return f"{self.namespace}{key['project_key']}"

    def _where(self, key: Any) -> list[Any]:
        return [
            T.project_key == self._project(key),
            T.session_id == key["session_id"],
            T.subpath == (key.get("subpath") or ""),
        ]

    async def append(self, key: Any, entries: list[Entry]) -> None:
        if not entries:
            return
        project, session_id, subpath = self._project(key), key["session_id"], key.get("subpath") or ""
        rows = [
            {
                "project_key": project,
                "session_id": session_id,
                "subpath": subpath,
                "uuid": entry["uuid"] if isinstance(entry.get("uuid"), str) else None,
                "entry": entry,
            }
            for entry in entries
        ]
        # One multi-row VALUES statement: ids are drawn in row order, so `load()` returns append order.
        stmt = (
            insert(T)
            .values(rows)
            .on_conflict_do_nothing(
                index_elements=["project_key", "session_id", "subpath", "uuid"], index_where=text("uuid IS NOT NULL")
            )
        )
        async with self.alchemy.get_session() as db:
            await db.execute(stmt)
            await db.commit()

    async def load(self, key: Any) -> list[Entry] | None:
        async with self.alchemy.get_session() as db:
            rows = (await db.execute(select(T.entry).where(*self._where(key)).order_by(T.id))).scalars().all()
        return list(rows) if rows else None

    async def list_sessions(self, project_key: str) -> list[dict[str, Any]]:
        async with self.alchemy.get_session() as db:
            result = await db.execute(
                select(T.session_id, func.max(T.updated_at))
                .where(T.project_key == f"{self.namespace}{project_key}", T.subpath == "")
                .group_by(T.session_id)
            )
            return [{"session_id": sid, "mtime": int(mtime.timestamp() * 1000)} for sid, mtime in result.all()]

    async def delete(self, key: Any) -> None:
        filters = [T.project_key == self._project(key), T.session_id == key["session_id"]]
        if key.get("subpath"):
            filters.append(T.subpath == key["subpath"])
        async with self.alchemy.get_session() as db:
            await db.execute(delete(T).where(*filters))
            await db.commit()

    async def list_subkeys(self, key: Any) -> list[str]:
        async with self.alchemy.get_session() as db:
            result = await db.execute(
                select(T.subpath)
                .distinct()
                .where(T.project_key == self._project(key), T.session_id == key["session_id"], T.subpath != "")
            )
            return sorted(result.scalars().all())
