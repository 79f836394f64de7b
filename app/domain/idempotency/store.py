"""`IdempotencyStore`: `Idempotency-Key` records in Postgres (durable: a Valkey flush forgets nothing).

A record is claimed by one request at a time with an INSERT that only one can win (unique on API key +
key); the winner completes it with the outcome to replay, or removes it when the outcome was an error
(errors are not remembered). A claim whose request died is taken over after `STALE_CLAIM`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db.models import IdempotencyRecord

REMEMBER_FOR = timedelta(hours=24)
# A claim not completed within this long belongs to a request that died (its instance was killed).
STALE_CLAIM = timedelta(seconds=60)


@dataclass(frozen=True)
class Claimed:
    record_id: int


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: bytes | None
    headers: dict[str, str]


@dataclass(frozen=True)
class InProgress:
    pass


@dataclass(frozen=True)
class Running:
    """The first request is still answering, but the run it started exists (e.g. `/query/single`)."""

    run_id: UUID


@dataclass(frozen=True)
class Reused:
    pass


Begin = Claimed | Replay | InProgress | Running | Reused


class IdempotencyStore:
    def __init__(self, alchemy: SQLAlchemyAsyncConfig) -> None:
        self.alchemy = alchemy

    async def begin(self, owner_key_id: UUID, key: str, fingerprint: str) -> Begin:
        now = datetime.now(UTC)
        async with self.alchemy.get_session() as db:
            # An expired record is forgotten: the key may be used afresh.
            await db.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.owner_key_id == owner_key_id,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.expires_at < now,
                )
            )
            inserted = (
                await db.execute(
                    pg_insert(IdempotencyRecord)
                    .values(
                        owner_key_id=owner_key_id,
                        key=key,
                        fingerprint=fingerprint,
                        state="pending",
                        expires_at=now + REMEMBER_FOR,
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["owner_key_id", "key"])
                    .returning(IdempotencyRecord.id)
                )
            ).scalar_one_or_none()
            if inserted is not None:
                await db.commit()
                return Claimed(inserted)
            row = (
                await db.execute(
                    select(IdempotencyRecord).where(
                        IdempotencyRecord.owner_key_id == owner_key_id, IdempotencyRecord.key == key
                    )
                )
            ).scalar_one_or_none()
            if row is None:  # completed with an error and removed in between: try once more
                await db.commit()
                return await self.begin(owner_key_id, key, fingerprint)
            if row.fingerprint != fingerprint:
                return Reused()
            if row.state == "done" and row.status_code is not None:
                return Replay(row.status_code, row.body, dict(row.headers or {}))
            if row.headers and row.headers.get("x-run-id"):
                return Running(UUID(row.headers["x-run-id"]))
            if now - row.updated_at < STALE_CLAIM:
                return InProgress()
            taken = await db.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == row.id, IdempotencyRecord.updated_at == row.updated_at)
                .values(updated_at=now)
            )
            await db.commit()
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return Claimed(row.id)
            return InProgress()

    async def complete(self, record_id: int, status_code: int, body: bytes | None, headers: dict[str, Any]) -> None:
        async with self.alchemy.get_session() as db:
            await db.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == record_id)
                .values(
                    state="done",
                    status_code=status_code,
                    body=body,
                    headers=headers,
                    updated_at=datetime.now(UTC),
                )
            )
            await db.commit()

    async def attach_run(self, record_id: int, run_id: UUID) -> None:
        """The run a still-pending request started: a repeat meanwhile waits for that run instead of a 409."""
        async with self.alchemy.get_session() as db:
            await db.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == record_id, IdempotencyRecord.state == "pending")
                .values(headers={"x-run-id": str(run_id)})
            )
            await db.commit()

    async def abandon(self, record_id: int) -> None:
        async with self.alchemy.get_session() as db:
            await db.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))
            await db.commit()

    async def purge_expired(self) -> int:
        async with self.alchemy.get_session() as db:
            result = await db.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < datetime.now(UTC)))
            await db.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]
