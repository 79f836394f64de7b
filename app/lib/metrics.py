"""Prometheus metrics. With several Granian workers set PROMETHEUS_MULTIPROC_DIR (an empty, writable
directory): every worker writes there and `/metrics` aggregates them (gauges sum live processes)."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

from app.lib.compat.asgi_wrapping import wrap_asgi_handler

PREFIX = "agentapi"

cache_requests = Counter(
    f"{PREFIX}_session_cache_requests_total",
    "Session cache lookups by result: hit, miss, fallback (Valkey down).",
    ["result"],
)
lock_acquisitions = Counter(f"{PREFIX}_lock_acquisitions_total", "Session lock acquisitions by outcome.", ["outcome"])
lock_wait_seconds = Histogram(
    f"{PREFIX}_lock_wait_seconds",
    "Time spent waiting for the session lock.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
active_runs = Gauge(f"{PREFIX}_active_runs", "Runs executing on this instance.", multiprocess_mode="livesum")
runs_total = Counter(f"{PREFIX}_runs_total", "Finished runs by outcome.", ["reason"])
interrupt_latency_seconds = Histogram(
    f"{PREFIX}_interrupt_delivery_seconds",
    "From interrupt request to the run's `done` (owning instance).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)
stream_followers = Gauge(f"{PREFIX}_event_stream_followers", "Open SSE event streams.", multiprocess_mode="livesum")
backend_errors = Counter(f"{PREFIX}_backend_errors_total", "Errors talking to a backing service.", ["service"])
cache_warmed = Counter(
    f"{PREFIX}_session_cache_warmed_total", "Sessions written to the cache by startup warming (set-if-newer)."
)
webhook_attempts = Counter(
    f"{PREFIX}_webhook_attempts_total",
    "Webhook delivery attempts by outcome: success (2xx), http_error, timeout, network_error, refused (SSRF guard).",
    ["outcome"],
)
webhook_deliveries = Counter(
    f"{PREFIX}_webhook_deliveries_total", "Webhook deliveries that ended, by status: delivered, failed.", ["status"]
)
webhook_delivery_seconds = Histogram(
    f"{PREFIX}_webhook_delivery_seconds",
    "From the event's commit to the receiver's 2xx (retries included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
session_read_shortcut = Counter(
    f"{PREFIX}_session_read_shortcut_total",
    "GET /api/v1/sessions/{id} by who answered it: served (a cache hit, in front of the router, "
    "app.domain.sessions.read_shortcut) or routed (handed on to the router).",
    ["outcome"],
)
auth_failures = Counter(
    f"{PREFIX}_auth_failures_total",
    "Failed authentications by outcome: unknown (looked up, no such key), cached (known unknown, no lookup), "
    "malformed (no lookup), limited (429: too many failures from the client's address, no lookup).",
    ["outcome"],
)

# -- HTTP requests ------------------------------------------------------------------------------------------
# Counted at the ASGI edge, outside Litestar's exception handling: the status is the one sent (a 401 raised by
# the authentication middleware, a 404 from the router or a handler), not the 200 Litestar's Prometheus
# middleware assumed when an exception passed through it. `path` is the route template; requests no route
# matched share one label value, so a scanner cannot create unbounded series.

HTTP_LABELS = ["method", "path", "status_code", "app_name"]
UNMATCHED_PATH = "unmatched"

requests_total = Counter(f"{PREFIX}_requests_total", "HTTP requests by status as sent.", HTTP_LABELS)
request_duration_seconds = Histogram(
    f"{PREFIX}_request_duration_seconds", "From request start to the end of the response, in seconds.", HTTP_LABELS
)
requests_error_total = Counter(f"{PREFIX}_requests_error_total", "HTTP requests answered with a 5xx.", HTTP_LABELS)
requests_in_progress = Gauge(
    f"{PREFIX}_requests_in_progress", "HTTP requests being served.", ["method", "app_name"], multiprocess_mode="livesum"
)


class RequestMetricsMiddleware:
    """ASGI layer counting every HTTP request with the status it was answered with."""

    def __init__(self, app: ASGIApp, *, app_name: str, exclude: tuple[str, ...] = ("/metrics",)) -> None:
        self.app = app
        self.app_name = app_name
        self.exclude = exclude
        self._in_progress: dict[str, Any] = {}
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"].startswith(self.exclude):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        status = 500  # an exception that escaped without a response is answered 500 by the server
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self._in_progress.get(method)
        if in_progress is None:
            in_progress = self._in_progress[method] = requests_in_progress.labels(method, self.app_name)
        in_progress.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            in_progress.dec()
            labels = (method, scope.get("path_template") or UNMATCHED_PATH, status)
            children = self._children.get(labels)
            if children is None:
                children = self._series(labels)
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
            if children[2] is not None:
                children[2].inc()

    def _series(self, labels: tuple[str, str, int]) -> tuple[Any, Any, Any]:
        """The labelled children of one (method, route, status), looked up once: `labels()` takes a lock and
        builds a key on every call. Bounded: routes are templates, methods and statuses few."""
        method, path, status = labels
        values = (method, path, str(status), self.app_name)
        children = (
            requests_total.labels(*values),
            request_duration_seconds.labels(*values),
            requests_error_total.labels(*values) if status >= 500 else None,
        )
        if len(self._children) < 10_000:
            self._children[labels] = children
        return children


def install(app: Any, *, app_name: str) -> None:
    """Puts `RequestMetricsMiddleware` around a Litestar app's ASGI handler."""
    wrap_asgi_handler(app, lambda inner: RequestMetricsMiddleware(inner, app_name=app_name))
