"""Prometheus metrics. With several Granian workers set PROMETHEUS_MULTIPROC_DIR (an empty, writable
directory): every worker writes there and `/metrics` aggregates them (gauges sum live processes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
auth_failures = Counter(
    f"{PREFIX}_auth_failures_total",
    "Failed authentications by outcome: unknown (looked up, no such key), cached (known unknown, no lookup), "
    "malformed (no lookup), limited (429: too many failures from the client's address, no lookup).",
    ["outcome"],
)
