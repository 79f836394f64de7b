"""OpenTelemetry tracing through Litestar's `OpenTelemetryPlugin`, when the `otel` extra is installed and tracing
is configured (`OTEL_ENABLED=true` or `OTEL_EXPORTER_OTLP_ENDPOINT` set); otherwise nothing at all.

Spans go to an OTLP/HTTP collector (`OTEL_EXPORTER_OTLP_ENDPOINT`, plus the SDK's other standard `OTEL_*`
variables) in batches. Each request gets one server span named `<METHOD> <route template>` (e.g.
`GET /api/v1/sessions/{session_id}`) with `http.route`, so span names stay low-cardinality; health and
metrics probes are not traced."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.lib.logging import bind_log_context

if TYPE_CHECKING:
    from litestar.plugins.opentelemetry import OpenTelemetryPlugin
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

EXCLUDED_PATHS = ["^/health/", "^/metrics"]
_provider: TracerProvider | None = None


def otel_installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("opentelemetry.sdk", "opentelemetry.instrumentation.asgi", "opentelemetry.exporter.otlp")
    )


def tracing_wanted(enabled: bool, endpoint: str) -> bool:
    return enabled or bool(endpoint)


def span_exporter() -> SpanExporter:
    """The OTLP/HTTP exporter; it reads OTEL_EXPORTER_OTLP_ENDPOINT (and headers, timeout...) itself."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracer_provider(instance_id: str) -> TracerProvider:
    """One provider per process (several apps in one process share it), also installed as the global one."""
    global _provider
    if _provider is None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME") or "agent-api",
                "service.instance.id": instance_id,
            }
        )
        _provider = TracerProvider(resource=resource)
        _provider.add_span_processor(BatchSpanProcessor(span_exporter()))
        trace.set_tracer_provider(_provider)
    return _provider


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The server span's first name: the method only (the route is not known before routing)."""
    return str(scope.get("method") or scope.get("type") or "request"), {}


class RouteSpanNameMiddleware:
    """Runs after routing: names the server span `<METHOD> <route template>` and sets `http.route`; puts the
    span's `trace_id` and `span_id` on this request's log lines (the access line included), so logs and
    traces join up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            from opentelemetry import trace

            span = trace.get_current_span()
            template = scope.get("path_template")
            if span.is_recording():
                if template:
                    span.update_name(f"{scope.get('method', '')} {template}")
                    span.set_attribute("http.route", template)
                context = span.get_span_context()
                bind_log_context(trace_id=format(context.trace_id, "032x"), span_id=format(context.span_id, "016x"))
        await self.app(scope, receive, send)


def build_otel_plugin(*, enabled: bool, endpoint: str, instance_id: str) -> OpenTelemetryPlugin | None:
    """The plugin when tracing is wanted and possible, else None (and the app runs exactly as without it)."""
    if not tracing_wanted(enabled, endpoint):
        return None
    if not otel_installed():
        logger.warning("tracing is configured but the `otel` extra is not installed (uv sync --extra otel)")
        return None
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    config = OpenTelemetryConfig(
        tracer_provider=tracer_provider(instance_id),
        scope_span_details_extractor=_span_details,
        exclude=EXCLUDED_PATHS,
        exclude_spans=["receive", "send"],
        scopes={ScopeType.HTTP},
    )
    return OpenTelemetryPlugin(config)
