from __future__ import annotations

from datetime import datetime

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column


class ApiKey(UUIDv7AuditBase):
    """An API key. Only the SHA-256 of the key is stored: keys are 256-bit random, so a slow hash adds nothing."""

    __tablename__ = "api_key"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    fingerprint: Mapped[str] = mapped_column(String(12))
    """The first 12 hex digits of `key_hash`, to tell keys apart in `keys list`; no part of the key itself (a
    short bootstrap `API_KEY` would otherwise be stored whole)."""
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
