"""The problems the webhooks domain answers with: one constructor per case, each message said once."""

from __future__ import annotations

from uuid import UUID

from app.lib.problems import ApiError


def endpoint_not_found(endpoint_id: UUID) -> ApiError:
    return ApiError(
        404,
        "WEBHOOK_ENDPOINT_NOT_FOUND",
        f"Webhook endpoint {endpoint_id} does not exist.",
        title="Webhook endpoint not found",
    )


def invalid_url(reason: object) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", f"url: {reason}", title="Invalid webhook URL")


def url_refused(reason: object) -> ApiError:
    """The SSRF guard refused it (a private address, or a host that did not resolve in time)."""
    return ApiError(422, "WEBHOOK_URL_REFUSED", f"url: {reason}", title="Webhook URL refused")


def endpoint_limit_reached(limit: int) -> ApiError:
    return ApiError(
        409,
        "WEBHOOK_ENDPOINT_LIMIT",
        f"An API key may have at most {limit} webhook endpoints; delete one first.",
        title="Webhook endpoint limit reached",
    )
