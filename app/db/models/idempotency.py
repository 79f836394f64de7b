from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import BigIntAuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import Index, LargeBinary, SmallInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column


class IdempotencyRecord(BigIntAuditBase):
    """One `Idempotency-Key` of one API key: the request it was first used for and, once answered, the
    outcome to replay. Durable (Postgres), so a Valkey flush forgets nothing."""

    __tablename__ = "idempotency_record"
    __table_args__ = (
        Index("ux_idempotency_owner_key", "owner_key_id", "key", unique=True),
        Index("ix_idempotency_expires", "expires_at"),
    )

    owner_key_id: Mapped[UUID]
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    """SHA-256 of method, path and body: a reuse with another request is refused."""
    state: Mapped[str] = mapped_column(String(16), default="pending")
    status_code: Mapped[int | None] = mapped_column(SmallInteger, default=None, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None, nullable=True)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
