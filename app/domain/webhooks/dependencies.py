from __future__ import annotations

from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.webhooks.services import WebhookEndpointService


async def provide_webhook_service(db_session: NamedDependency[AsyncSession]) -> WebhookEndpointService:
    return WebhookEndpointService(session=db_session)
