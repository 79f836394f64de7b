"""Webhook endpoints and their deliveries: the deliveries table is the durable outbox."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column


class WebhookEndpoint(UUIDv7AuditBase):
    """A URL that receives the owning key's run events, signed with `secret` (Standard Webhooks)."""

    __tablename__ = "webhook_endpoint"
    __table_args__ = (Index("ix_webhook_endpoint_owner", "owner_key_id", "id"),)

    owner_key_id: Mapped[UUID] = mapped_column(ForeignKey("api_key.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str] | None] = mapped_column(ARRAY(String(32)), default=None, nullable=True)
    """The event types delivered; NULL = all."""
    secret: Mapped[str] = mapped_column(String(100))
    """`whsec_<base64>`. Kept as is: signing needs it (an HMAC key cannot be stored as a hash)."""


class WebhookDelivery(UUIDv7AuditBase):
    """One event for one endpoint: the outbox row, written in the transaction that commits the run's status,
    then claimed (`claim_token`, `claimed_until`) and attempted by any instance until delivered or failed."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_endpoint_event"),
        Index("ix_webhook_delivery_endpoint_created", "endpoint_id", "created_at"),
        Index(
            "ix_webhook_delivery_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    endpoint_id: Mapped[UUID] = mapped_column(ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    """The event's id: the body's `id` and the `webhook-id` header, the same on every attempt."""
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    """The exact body sent (and signed) on every attempt."""
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    response_status: Mapped[int | None] = mapped_column(Integer, default=None, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None, nullable=True)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None, nullable=True)
    claim_token: Mapped[UUID | None] = mapped_column(default=None, nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, nullable=True)
