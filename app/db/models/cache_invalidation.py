from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import DefaultBase
from advanced_alchemy.types import GUID, DateTimeUTC
from sqlalchemy import func
from sqlalchemy.orm import Mapped, mapped_column


class CacheInvalidation(DefaultBase):
    """A session whose cache entry a committed write could not update (its instance could not reach Valkey).

    Any instance that reaches Valkey refreshes the entry from Postgres and deletes the row (see
    app.domain.sessions.invalidations), so the other instances stop serving the old version within seconds."""

    __tablename__ = "cache_invalidation"

    session_id: Mapped[UUID] = mapped_column(GUID(length=16), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now(), index=True)
