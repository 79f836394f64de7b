"""Webhook endpoint use cases, per API key (another key's endpoints are 404, never its data)."""

from __future__ import annotations

import asyncio
from typing import Any, cast
from uuid import UUID

from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import delete, func, select
from sqlalchemy.orm import defer

from app.db.models import ApiKey
from app.db.models import WebhookDelivery as DeliveryRow
from app.db.models import WebhookEndpoint as EndpointRow
from app.domain.webhooks import ssrf
from app.domain.webhooks.errors import endpoint_limit_reached, endpoint_not_found, invalid_url, url_refused
from app.domain.webhooks.schemas import (
    EVENT_TYPES,
    MAX_ENDPOINTS_PER_KEY,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPage,
)
from app.domain.webhooks.signing import new_secret

DNS_TIMEOUT = 5.0


def to_schema(row: EndpointRow) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id,
        url=row.url,
        events=cast("Any", list(row.events) if row.events is not None else list(EVENT_TYPES)),
        created_at=row.created_at,
    )


def delivery_schema(row: DeliveryRow) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        event_id=row.event_id,
        type=cast("Any", row.event_type),
        status=cast("Any", row.status),
        attempts=row.attempts,
        response_status=row.response_status,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        created_at=row.created_at,
    )


async def check_url(raw: str, *, allow_private: bool) -> str:
    """The URL as stored; 400 when it is not a URL, 422 when the SSRF guard refuses it."""
    try:
        url = ssrf.parse_url(raw)
        async with asyncio.timeout(DNS_TIMEOUT):
            await ssrf.check_addresses(url, allow_private=allow_private)
    except TimeoutError as exc:
        raise url_refused(f"the host did not resolve within {DNS_TIMEOUT:g} s") from exc
    except ssrf.InvalidWebhookUrl as exc:
        raise invalid_url(exc) from exc
    except ssrf.RefusedWebhookUrl as exc:
        raise url_refused(exc) from exc
    return str(url)


class WebhookEndpointService(SQLAlchemyAsyncRepositoryService[EndpointRow]):
    class Repository(SQLAlchemyAsyncRepository[EndpointRow]):
        model_type = EndpointRow

    repository_type = Repository

    async def create_endpoint(
        self, owner_key_id: UUID, data: WebhookEndpointCreate, *, allow_private: bool
    ) -> WebhookEndpointCreated:
        url = await check_url(data.url, allow_private=allow_private)
        events = None if data.events is None else [e for e in EVENT_TYPES if e in set(data.events)]
        db = self.repository.session
        # The key's row lock serialises this key's creates, so the limit holds under concurrency.
        await db.execute(select(ApiKey.id).where(ApiKey.id == owner_key_id).with_for_update())
        count = (
            await db.execute(
                select(func.count()).select_from(EndpointRow).where(EndpointRow.owner_key_id == owner_key_id)
            )
        ).scalar_one()
        if count >= MAX_ENDPOINTS_PER_KEY:
            await db.rollback()
            raise endpoint_limit_reached(MAX_ENDPOINTS_PER_KEY)
        row = EndpointRow(owner_key_id=owner_key_id, url=url, events=events, secret=new_secret())
        db.add(row)
        await db.flush()
        await db.commit()
        endpoint = to_schema(row)
        return WebhookEndpointCreated(
            id=endpoint.id, url=endpoint.url, events=endpoint.events, created_at=endpoint.created_at, secret=row.secret
        )

    async def load_owned(self, endpoint_id: UUID, owner_key_id: UUID) -> EndpointRow:
        row = (
            await self.repository.session.execute(
                select(EndpointRow).where(EndpointRow.id == endpoint_id, EndpointRow.owner_key_id == owner_key_id)
            )
        ).scalar_one_or_none()
        if row is None:
            raise endpoint_not_found(endpoint_id)
        found: EndpointRow = row
        return found

    async def get_endpoint(self, endpoint_id: UUID, owner_key_id: UUID) -> WebhookEndpoint:
        return to_schema(await self.load_owned(endpoint_id, owner_key_id))

    async def list_endpoints(self, owner_key_id: UUID, *, limit: int, offset: int) -> WebhookEndpointPage:
        rows, total = await self.get_many_and_count(
            EndpointRow.owner_key_id == owner_key_id,
            LimitOffset(limit=limit, offset=offset),
            order_by=[(EndpointRow.created_at, True), (EndpointRow.id, True)],
            count_with_window_function=False,
        )
        return WebhookEndpointPage(items=[to_schema(r) for r in rows], total=total, limit=limit, offset=offset)

    async def delete_endpoint(self, endpoint_id: UUID, owner_key_id: UUID) -> None:
        """Its deliveries go with it (cascade): no further attempt is made."""
        db = self.repository.session
        result = await db.execute(
            delete(EndpointRow)
            .where(EndpointRow.id == endpoint_id, EndpointRow.owner_key_id == owner_key_id)
            .returning(EndpointRow.id)
        )
        if result.scalar_one_or_none() is None:
            raise endpoint_not_found(endpoint_id)
        await db.commit()

    async def list_deliveries(
        self, endpoint_id: UUID, owner_key_id: UUID, *, limit: int, offset: int
    ) -> WebhookDeliveryPage:
        await self.load_owned(endpoint_id, owner_key_id)
        db = self.repository.session
        total = (
            await db.execute(
                select(func.count()).select_from(DeliveryRow).where(DeliveryRow.endpoint_id == endpoint_id)
            )
        ).scalar_one()
        rows = (
            await db.execute(
                select(DeliveryRow)
                .options(defer(DeliveryRow.payload))
                .where(DeliveryRow.endpoint_id == endpoint_id)
                .order_by(DeliveryRow.created_at.desc(), DeliveryRow.id.desc())
                .limit(limit)
                .offset(offset)
            )
        ).scalars()
        return WebhookDeliveryPage(items=[delivery_schema(r) for r in rows], total=total, limit=limit, offset=offset)
