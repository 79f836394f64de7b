from __future__ import annotations

from typing import Any
from uuid import UUID

from advanced_alchemy.base import BigIntAuditBase
from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column


class TranscriptEntry(BigIntAuditBase):
    """One entry of an agent transcript, so any instance can resume any session."""

    __tablename__ = "transcript_entry"
    __table_args__ = (Index("ix_transcript_entry_session_key", "session_id", "subpath", "id"),)

    session_id: Mapped[UUID] = mapped_column(ForeignKey("agent_session.id", ondelete="CASCADE"))
    subpath: Mapped[str] = mapped_column(String(500), default="")
    entry: Mapped[dict[str, Any]] = mapped_column(JSONB)
