from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column


class AgentSession(UUIDv7AuditBase):
    """One agent session. `version` is the ORM version counter: every UPDATE is fenced on it."""

    __tablename__ = "agent_session"
    __table_args__ = (
        Index("ix_agent_session_owner_created", "owner_key_id", "id"),
        Index("ix_agent_session_status", "status"),
        Index("ix_agent_session_tags", "tags", postgresql_using="gin"),
        # The reaper's sweep: sessions with a run in flight or waiting.
        Index(
            "ix_agent_session_in_flight",
            "id",
            postgresql_where=text("active_run_id IS NOT NULL OR queued_runs > 0"),
        ),
    )

    owner_key_id: Mapped[UUID] = mapped_column(ForeignKey("api_key.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(String(500), default=None, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="idle")
    model: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    permission_mode: Mapped[str | None] = mapped_column(String(50), default=None, nullable=True)
    parent_session_id: Mapped[UUID | None] = mapped_column(default=None, nullable=True)
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    total_turns: Mapped[int] = mapped_column(Integer, default=0)
    total_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    last_run_id: Mapped[UUID | None] = mapped_column(default=None, nullable=True)
    active_run_id: Mapped[UUID | None] = mapped_column(default=None, nullable=True)
    active_instance_id: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    active_started_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    agent_session_id: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    queued_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Runs waiting in this session's queue; changed in the same transaction as their status."""
    agent_fork_from: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    """A fork that has not run yet: the parent's backend session id, which its first run forks from."""

    __mapper_args__ = {"version_id_col": version}


# Startup cache warming reads the most recently active sessions (last run, else last update): migration 0003.
Index(
    "ix_agent_session_recency",
    func.coalesce(AgentSession.last_run_at, AgentSession.updated_at).desc(),
    AgentSession.id.desc(),
)
