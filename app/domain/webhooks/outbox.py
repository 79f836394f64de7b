"""The seam between runs and webhooks: `enqueue_run_event` writes one outbox row per matching endpoint inside
the caller's transaction, so an event exists exactly when the run state it reports was committed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from app.db.models import AgentRun, WebhookDelivery, WebhookEndpoint
from app.domain.runs.store import run_schema
from app.domain.webhooks.schemas import EVENT_TYPES

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "agentapi_webhooks"
"""Postgres NOTIFY channel: sent in the enqueuing transaction, so instances hear of a row only once committed."""


def new_event_id() -> str:
    return f"evt_{uuid7().hex}"


async def enqueue_run_event(db: AsyncSession, *, owner_key_id: UUID, event_type: str, run: dict[str, Any]) -> None:
    """Adds `event_type` about `run` (the Run as JSON-able dict) to the outbox of every endpoint of
    `owner_key_id` that subscribes to it. Does not commit: the caller's commit makes it durable."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    endpoint_ids = (
        (
            await db.execute(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.owner_key_id == owner_key_id,
                    or_(WebhookEndpoint.events.is_(None), WebhookEndpoint.events.contains([event_type])),
                )
            )
        )
        .scalars()
        .all()
    )
    if not endpoint_ids:
        return
    now = datetime.now(UTC)
    event_id = new_event_id()
    body = msgspec.json.encode({"id": event_id, "type": event_type, "created_at": now, "data": run})
    await db.execute(
        insert(WebhookDelivery),
        [
            {
                "id": UUID(str(uuid7())),
                "endpoint_id": endpoint_id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for endpoint_id in endpoint_ids
        ],
    )
    await db.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


async def enqueue_for_run(db: AsyncSession, run: AgentRun, event_type: str) -> None:
    """The runs' event hook (`RunStore`): the notice's `data` is the Run as the API shows it."""
    await enqueue_run_event(
        db, owner_key_id=run.owner_key_id, event_type=event_type, run=msgspec.to_builtins(run_schema(run))
    )
