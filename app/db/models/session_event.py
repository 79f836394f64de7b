from __future__ import annotations

from typing import Any
from uuid import UUID

from advanced_alchemy.base import BigIntAuditBase
from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column


class SessionEvent(BigIntAuditBase):
    """A durable run event (all but `partial`), keyed by its Valkey stream id `<ms>-<seq>`.

    `stream_ms` and `stream_seq` split the id so Postgres orders events the way the stream does.
    """

    __tablename__ = "session_event"
    __table_args__ = (Index("ux_session_event_stream", "session_id", "stream_ms", "stream_seq", unique=True),)

    session_id: Mapped[UUID] = mapped_column(ForeignKey("agent_session.id", ondelete="CASCADE"))
    run_id: Mapped[UUID]
    stream_ms: Mapped[int] = mapped_column(BigInteger)
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)

    @property
    def stream_id(self) -> str:
        return f"{self.stream_ms}-{self.stream_seq}"
