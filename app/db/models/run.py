from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import BigInteger, Index, SmallInteger, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

# Statuses a run never leaves.
ENDED_STATUSES = ("completed", "interrupted", "error", "cancelled")


class AgentRun(UUIDv7AuditBase):
    """One run of a session, however it was started. Its status only moves forward (queued → running → an
    ended status, or queued → cancelled), and every move is a conditional UPDATE on the current status, so
    no two instances ever move one run.

    No foreign key to the session: a deleted session's runs stay readable (its queued ones as `cancelled`)."""

    __tablename__ = "agent_run"
    __table_args__ = (
        Index("ix_agent_run_session_created", "session_id", "created_at"),
        # The per-session queue in start order: `queue_rank` 0 (if_busy=interrupt) before 1 (enqueue).
        Index(
            "ix_agent_run_queue",
            "session_id",
            "queue_rank",
            "queue_seq",
            postgresql_where=text("status = 'queued'"),
        ),
    )

    session_id: Mapped[UUID]
    owner_key_id: Mapped[UUID]
    status: Mapped[str] = mapped_column(String(20))
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    if_busy: Mapped[str] = mapped_column(String(20), default="reject")
    queue_rank: Mapped[int] = mapped_column(SmallInteger, default=1)
    queue_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("nextval('agent_run_queue_seq')"))
    started_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    instance_id: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    """Deleted by its owner (e.g. `DELETE /v1/responses/{id}`): no longer found, kept for the queue's order."""
