"""Wire shapes of the webhooks domain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from msgspec import Meta, Struct

EventType = Literal["run.completed", "run.failed", "run.interrupted", "run.cancelled", "run.waiting"]
EVENT_TYPES: tuple[str, ...] = ("run.completed", "run.failed", "run.interrupted", "run.cancelled", "run.waiting")
DeliveryStatus = Literal["pending", "delivered", "failed"]

MAX_URL_LENGTH = 2048
MAX_ENDPOINTS_PER_KEY = 10

Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        pattern=r"^[^\x00-\x20\x7f]+$",
        description="An http(s) URL whose host is a public address (unless WEBHOOK_ALLOW_PRIVATE_NETWORKS).",
    ),
]
EventTypes = Annotated[
    list[EventType], Meta(min_length=1, max_length=len(EVENT_TYPES), description="Event types to receive.")
]


class WebhookEndpointCreate(Struct, forbid_unknown_fields=True):
    url: Url
    events: EventTypes | None = None
    """Omitted (or null): every event type."""


class WebhookEndpoint(Struct):
    id: UUID
    url: str
    events: list[EventType]
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpoint):
    secret: Annotated[
        str, Meta(description="`whsec_<base64>`: the Standard Webhooks signing secret. Shown only in this response.")
    ]


class WebhookEndpointPage(Struct):
    items: list[WebhookEndpoint]
    total: int
    limit: int
    offset: int


class WebhookDelivery(Struct):
    id: UUID
    event_id: str
    type: EventType
    status: DeliveryStatus
    attempts: int
    response_status: int | None
    next_attempt_at: datetime | None
    """When the next attempt is due while `pending`; null once delivered or failed."""
    created_at: datetime


class WebhookDeliveryPage(Struct):
    items: list[WebhookDelivery]
    total: int
    limit: int
    offset: int
