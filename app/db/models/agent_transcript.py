from __future__ import annotations

from typing import Any

from advanced_alchemy.base import BigIntAuditBase
from sqlalchemy import Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column


class AgentTranscriptEntry(BigIntAuditBase):
    """One line of an agent's own transcript, keyed the way the Claude SDK's `SessionStore` keys them:
    `project_key`, the SDK's `session_id` and `subpath` ("" for the main transcript). The id keeps append
    order; an entry's `uuid` (when it has one) is an idempotency key."""

    __tablename__ = "agent_transcript_entry"
    __table_args__ = (
        Index("ix_agent_transcript_entry_key", "project_key", "session_id", "subpath", "id"),
        Index(
            "ux_agent_transcript_entry_uuid",
            "project_key",
            "session_id",
            "subpath",
            "uuid",
            unique=True,
            postgresql_where=text("uuid IS NOT NULL"),
        ),
    )

    project_key: Mapped[str] = mapped_column(String(300))
    session_id: Mapped[str] = mapped_column(String(200))
    subpath: Mapped[str] = mapped_column(String(500), default="")
    uuid: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    entry: Mapped[dict[str, Any]] = mapped_column(JSONB)
