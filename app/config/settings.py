"""Settings as small dataclasses loaded from the environment (and `.env`).

Every setting is listed with its default in `.env.example`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dotenv import load_dotenv


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


def _env_bool(name: str, default: bool) -> bool:
    return _env(name, "true" if default else "false").lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(default_factory=lambda: _env("DATABASE_URL", ""))
    pool_size: int = field(default_factory=lambda: _env_int("DATABASE_POOL_SIZE", 10))
    max_overflow: int = field(default_factory=lambda: _env_int("DATABASE_MAX_OVERFLOW", 10))
    connect_timeout: float = field(default_factory=lambda: _env_float("DATABASE_CONNECT_TIMEOUT", 3.0))
    pool_timeout: float = field(default_factory=lambda: _env_float("DATABASE_POOL_TIMEOUT", 10.0))
    """Seconds a request waits for a pooled connection under a burst (then 503 DATABASE_UNAVAILABLE)."""
    pool_ping_idle: float = field(default_factory=lambda: _env_float("DATABASE_POOL_PING_IDLE", 2.0))
    """A pooled connection idle this many seconds is pinged before use (0: every checkout)."""
    command_timeout: float = field(default_factory=lambda: _env_float("DATABASE_COMMAND_TIMEOUT", 10.0))
    migrate_on_startup: bool = field(default_factory=lambda: _env_bool("DATABASE_MIGRATE_ON_STARTUP", True))
    echo: bool = field(default_factory=lambda: _env_bool("DATABASE_ECHO", False))

    @property
    def async_url(self) -> str:
        """The URL in SQLAlchemy's asyncpg form, whatever scheme the operator used."""
        url = self.url
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url


@dataclass(frozen=True)
class ValkeySettings:
    url: str = field(default_factory=lambda: _env("VALKEY_URL", ""))
    socket_timeout: float = field(default_factory=lambda: _env_float("VALKEY_SOCKET_TIMEOUT", 2.0))
    connect_timeout: float = field(default_factory=lambda: _env_float("VALKEY_CONNECT_TIMEOUT", 1.0))
    max_connections: int = field(default_factory=lambda: _env_int("VALKEY_MAX_CONNECTIONS", 2000))
    cluster: bool = field(default_factory=lambda: _env_bool("VALKEY_CLUSTER", False))
    """`VALKEY_URL` names one node of a Valkey Cluster; the client discovers the rest (SPEC §11)."""


@dataclass(frozen=True)
class SessionSettings:
    cache_ttl: int = field(default_factory=lambda: _env_int("SESSION_CACHE_TTL", 7200))
    lock_ttl_ms: int = field(default_factory=lambda: _env_int("SESSION_LOCK_TTL_MS", 5000))
    lock_timeout: float = field(default_factory=lambda: _env_float("SESSION_LOCK_TIMEOUT", 5.0))
    cache_warm_count: int = field(default_factory=lambda: _env_int("CACHE_WARM_COUNT", 1000))
    """Most recently active sessions put in the cache at startup; 0 disables warming."""
    cache_warm_timeout: float = field(default_factory=lambda: _env_float("CACHE_WARM_TIMEOUT", 10.0))
    cache_sweep_interval: float = field(default_factory=lambda: _env_float("SESSION_CACHE_SWEEP_INTERVAL", 2.0))
    """How often each instance applies the cache writes other instances missed (Valkey unreachable from them):
    the bound on how long a partially partitioned write stays invisible to the others; 0 disables."""
    cache_sweep_batch: int = field(default_factory=lambda: _env_int("SESSION_CACHE_SWEEP_BATCH", 500))


@dataclass(frozen=True)
class RunSettings:
    lease_ttl_ms: int = field(default_factory=lambda: _env_int("RUN_LEASE_TTL_MS", 30000))
    lease_renew_interval: float = field(default_factory=lambda: _env_float("RUN_LEASE_RENEW_INTERVAL", 10.0))
    reaper_interval: float = field(default_factory=lambda: _env_float("RUN_REAPER_INTERVAL", 1.0))
    presence_ttl: float = field(default_factory=lambda: _env_float("INSTANCE_PRESENCE_TTL", 4.0))
    """Seconds an instance's presence key lives without renewal: a SIGKILLed instance's runs are declared lost
    within about this + 2 x INSTANCE_PRESENCE_INTERVAL + 1 + RUN_REAPER_INTERVAL seconds."""
    presence_interval: float = field(default_factory=lambda: _env_float("INSTANCE_PRESENCE_INTERVAL", 1.0))
    events_ttl: int = field(default_factory=lambda: _env_int("RUN_EVENTS_TTL", 3600))
    interrupt_ttl: int = field(default_factory=lambda: _env_int("RUN_INTERRUPT_TTL", 300))
    ping_interval: float = field(default_factory=lambda: _env_float("SSE_PING_INTERVAL", 15.0))
    shutdown_grace: float = field(default_factory=lambda: _env_float("RUN_SHUTDOWN_GRACE", 10.0))
    answer_timeout: float = field(default_factory=lambda: _env_float("RUN_ANSWER_TIMEOUT", 5.0))


@dataclass(frozen=True)
class AppSettings:
    api_key: str = field(default_factory=lambda: _env("API_KEY", ""))
    agent_backend: str = field(default_factory=lambda: _env("AGENT_BACKEND", "demo"))
    anthropic_api_key: str = field(default_factory=lambda: _env("ANTHROPIC_API_KEY", ""))
    instance_id: str = field(default_factory=lambda: _env("INSTANCE_ID", f"{socket.gethostname()}-{os.getpid()}"))
    rate_limit_per_minute: int = field(default_factory=lambda: _env_int("RATE_LIMIT_PER_MINUTE", 0))
    rate_limit_runs_per_minute: int = field(default_factory=lambda: _env_int("RATE_LIMIT_RUNS_PER_MINUTE", 0))
    """Budget for starting runs (query, query/single, resume); -1 = the same number as RATE_LIMIT_PER_MINUTE."""
    data_dir: Path = field(default_factory=lambda: Path(_env("AGENT_API_DATA_DIR", ".data")))
    debug: bool = field(default_factory=lambda: _env_bool("LITESTAR_DEBUG", False))
    auth_cache_ttl: float = field(default_factory=lambda: _env_float("AUTH_CACHE_TTL", 30.0))
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    log_format: str = field(default_factory=lambda: _env("LOG_FORMAT", "json"))
    """`json` (one object per line) or `console` (human-readable, for a terminal)."""
    log_access: bool = field(default_factory=lambda: _env_bool("LOG_ACCESS", True))
    """One `request` line per HTTP request (health and metrics probes only at DEBUG)."""
    read_shortcut: bool = field(default_factory=lambda: _env_bool("READ_SHORTCUT", True))
    """Answer a cache-hit `GET /api/v1/sessions/{id}` in front of the router (app.domain.sessions.read_shortcut)."""
    metrics_enabled: bool = field(default_factory=lambda: _env_bool("METRICS_ENABLED", True))
    """Count HTTP requests for `/metrics` (the per-request Prometheus layer); the domain metrics stay."""
    gc_freeze: bool = field(default_factory=lambda: _env_bool("GC_FREEZE", True))
    """After startup, move every object alive into the collector's permanent generation (app.lib.gc_tuning)."""
    gc_thresholds: str = field(default_factory=lambda: _env("GC_THRESHOLDS", "50000,20,100"))
    """`gc.set_threshold` after startup: 1-3 comma-separated integers; `-` keeps CPython's (700,10,10)."""
    otel_enabled: bool = field(default_factory=lambda: _env_bool("OTEL_ENABLED", False))
    """Tracing with OpenTelemetry (needs the `otel` extra); also on when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    otel_endpoint: str = field(default_factory=lambda: _env("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    auth_failures_per_minute: int = field(default_factory=lambda: _env_int("AUTH_FAILURES_PER_MINUTE", 20))
    """Failed authentications per client address per minute across all instances, then 429; 0 = no limit."""
    auth_negative_cache_ttl: float = field(default_factory=lambda: _env_float("AUTH_NEGATIVE_CACHE_TTL", 30.0))
    """Seconds an instance remembers that a key hash is unknown (at most 60: new keys work within a minute)."""
    auth_negative_cache_size: int = field(default_factory=lambda: _env_int("AUTH_NEGATIVE_CACHE_SIZE", 10000))
    trusted_proxies: tuple[str, ...] = field(default_factory=lambda: _env_list("TRUSTED_PROXIES"))
    """CIDRs whose X-Forwarded-For / Forwarded headers are believed; empty = none (the TCP peer is the client)."""
    cors_allow_origins: tuple[str, ...] = field(default_factory=lambda: _env_list("CORS_ALLOW_ORIGINS"))
    """Origins browsers may call the API from (`*` = any); empty = CORS off."""
    cors_allow_credentials: bool = field(default_factory=lambda: _env_bool("CORS_ALLOW_CREDENTIALS", False))


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in _env(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class ClaudeSettings:
    """The `claude` backend (AGENT_BACKEND=claude)."""

    cli_path: str = field(default_factory=lambda: _env("CLAUDE_CLI_PATH", ""))
    """The Claude Code CLI to run; empty = the one bundled with claude-agent-sdk."""
    cwd: str = field(default_factory=lambda: _env("CLAUDE_CWD", ""))
    """The agents' working directory; the same absolute path on every instance (transcripts are keyed by it)."""
    config_dir: str = field(default_factory=lambda: _env("CLAUDE_CONFIG_DIR", ""))
    """The CLI's config dir (local transcripts, state); empty = its default, ~/.claude."""
    models: tuple[str, ...] = field(default_factory=lambda: _env_list("CLAUDE_MODELS"))
    """Comma-separated allowed models; empty = any name matching CLAUDE_MODEL_PATTERN."""
    model_pattern: str = field(
        default_factory=lambda: _env(
            "CLAUDE_MODEL_PATTERN", r"^(claude-[a-z0-9][a-z0-9.-]*|opus|sonnet|haiku|opusplan|default)(\[1m\])?$"
        )
    )
    extra_tools: tuple[str, ...] = field(default_factory=lambda: _env_list("CLAUDE_EXTRA_TOOLS"))
    """Comma-separated tool names accepted besides the CLI's built-in ones and mcp__*."""


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook deliveries; times in seconds."""

    timeout: float = field(default_factory=lambda: _env_float("WEBHOOK_TIMEOUT", 10.0))
    retry_initial_delay: float = field(default_factory=lambda: _env_float("WEBHOOK_RETRY_INITIAL_DELAY", 5.0))
    retry_max_delay: float = field(default_factory=lambda: _env_float("WEBHOOK_RETRY_MAX_DELAY", 3600.0))
    retry_horizon: float = field(default_factory=lambda: _env_float("WEBHOOK_RETRY_HORIZON", 86400.0))
    allow_private_networks: bool = field(default_factory=lambda: _env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False))
    concurrency: int = field(default_factory=lambda: _env_int("WEBHOOK_CONCURRENCY", 32))
    """Deliveries in flight at once on this instance."""
    endpoint_concurrency: int = field(default_factory=lambda: _env_int("WEBHOOK_ENDPOINT_CONCURRENCY", 4))
    """Deliveries in flight at once to one endpoint, across all instances."""
    poll_interval: float = field(default_factory=lambda: _env_float("WEBHOOK_POLL_INTERVAL", 1.0))
    claim_lease: float = field(default_factory=lambda: _env_float("WEBHOOK_CLAIM_LEASE", 60.0))
    """How long a claimed delivery is reserved for its instance; at least WEBHOOK_TIMEOUT + 5 s is used."""


@dataclass(frozen=True)
class Settings:
    app: AppSettings = field(default_factory=AppSettings)
    db: DatabaseSettings = field(default_factory=DatabaseSettings)
    valkey: ValkeySettings = field(default_factory=ValkeySettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    runs: RunSettings = field(default_factory=RunSettings)
    claude: ClaudeSettings = field(default_factory=ClaudeSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    def api_key_is_set(self) -> bool:
        return bool(self.app.api_key)

    @classmethod
    def from_env(cls) -> Settings:
        load_dotenv(override=False)
        return cls()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
