from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from app.config.settings import Settings
from app.domain.keys.principal import AuthedRequest
from app.domain.webhooks.dependencies import provide_webhook_service
from app.domain.webhooks.schemas import (
    MAX_ENDPOINTS_PER_KEY,
    WebhookDeliveryPage,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPage,
)
from app.domain.webhooks.services import WebhookEndpointService
from app.lib.di import AppDependency
from app.lib.problems import PROBLEM_JSON, Problem, problem_responses

MAX_OFFSET = 2**53


def responses(*statuses: int) -> dict[int, Any]:
    """problem+json entries, with this domain's codes."""
    described = {
        400: "Malformed body or parameter, e.g. an unknown event type or a string that is not a URL "
        "(code VALIDATION_ERROR).",
        404: "No such webhook endpoint for this API key (code WEBHOOK_ENDPOINT_NOT_FOUND).",
        409: f"The API key already has {MAX_ENDPOINTS_PER_KEY} webhook endpoints (code WEBHOOK_ENDPOINT_LIMIT).",
        422: "The URL is not http(s), does not resolve, or resolves to a loopback, private, link-local, multicast "
        "or unspecified address (code WEBHOOK_URL_REFUSED).",
    }
    out = problem_responses(*statuses)
    for status, description in described.items():
        if status in out:
            out[status] = ResponseSpec(data_container=Problem, description=description, media_type=PROBLEM_JSON)
    return out


class WebhookEndpointController(Controller):
    path = "/api/v1/webhook-endpoints"
    tags = ["Webhooks"]
    dependencies = {"webhook_service": Provide(provide_webhook_service)}

    @post(
        "/",
        status_code=201,
        summary="Register a webhook endpoint",
        description="The response is the only one that shows the signing `secret` (Standard Webhooks, "
        "`whsec_<base64>`). `events` omitted: every event type. At most 10 endpoints per API key.",
        responses=responses(409, 422),
    )
    async def create_endpoint(
        self,
        request: AuthedRequest,
        settings: AppDependency[Settings],
        webhook_service: NamedDependency[WebhookEndpointService],
        data: JSONBody[WebhookEndpointCreate],
    ) -> WebhookEndpointCreated:
        allow_private = settings.webhooks.allow_private_networks
        return await webhook_service.create_endpoint(request.user.key_id, data, allow_private=allow_private)

    @get("/", summary="List webhook endpoints, newest first", responses=responses())
    async def list_endpoints(
        self,
        request: AuthedRequest,
        webhook_service: NamedDependency[WebhookEndpointService],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> WebhookEndpointPage:
        return await webhook_service.list_endpoints(request.user.key_id, limit=limit, offset=offset)

    @get("/{endpoint_id:uuid}", summary="Get a webhook endpoint", responses=responses(404))
    async def get_endpoint(
        self,
        request: AuthedRequest,
        webhook_service: NamedDependency[WebhookEndpointService],
        endpoint_id: FromPath[UUID],
    ) -> WebhookEndpoint:
        return await webhook_service.get_endpoint(endpoint_id, request.user.key_id)

    @delete(
        "/{endpoint_id:uuid}",
        status_code=204,
        summary="Delete a webhook endpoint (its pending deliveries are dropped)",
        responses=responses(404),
    )
    async def delete_endpoint(
        self,
        request: AuthedRequest,
        webhook_service: NamedDependency[WebhookEndpointService],
        endpoint_id: FromPath[UUID],
    ) -> None:
        await webhook_service.delete_endpoint(endpoint_id, request.user.key_id)

    @get(
        "/{endpoint_id:uuid}/deliveries",
        summary="An endpoint's deliveries, newest first",
        description="One item per event: `pending` (next attempt at `next_attempt_at`), `delivered` (a 2xx) or "
        "`failed` (no 2xx within WEBHOOK_RETRY_HORIZON); `attempts` made so far and the last `response_status`.",
        responses=responses(404),
    )
    async def list_deliveries(
        self,
        request: AuthedRequest,
        webhook_service: NamedDependency[WebhookEndpointService],
        endpoint_id: FromPath[UUID],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> WebhookDeliveryPage:
        return await webhook_service.list_deliveries(endpoint_id, request.user.key_id, limit=limit, offset=offset)
