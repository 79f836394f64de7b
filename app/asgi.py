"""`create_app()`: assembles settings, plugins, routes, middleware and exception handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
    SQLAlchemyPlugin,
)
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.middleware.base import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins import CLIPluginProtocol, InitPluginProtocol
from litestar.plugins.prometheus import PrometheusController
from litestar_granian import GranianPlugin
from sqlalchemy.ext.asyncio import create_async_engine

from app.config.settings import Settings, get_settings
from app.domain.health.controllers import HealthController, StartupWork
from app.domain.idempotency.middleware import IdempotencyMiddleware
from app.domain.idempotency.store import IdempotencyStore
from app.domain.keys.auth import ApiKeyAuthenticator, ApiKeyAuthMiddleware
from app.domain.keys.rate_limit import DEFAULT_GROUP, RUNS_GROUP, AuthFailureLimiter, RateLimitMiddleware
from app.domain.keys.services import ApiKeyService
from app.domain.openai.controllers import document_streams, openai_router
from app.domain.openai.schemas import ChatCompletionRequest, ResponseCreateRequest
from app.domain.runs.backend import build_backend, settings_check
from app.domain.runs.controllers import RunController, RunResourceController
from app.domain.runs.manager import RunManager
from app.domain.runs.reaper import RunReaper
from app.domain.runs.schemas import AnswerRequest, QueryRequest, RunRequest
from app.domain.runs.services import RunService
from app.domain.runs.store import RunStore
from app.domain.runs.streams import EventFollower
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.controllers import SessionController
from app.domain.sessions.invalidations import InvalidationSweeper, PendingInvalidations
from app.domain.sessions.keys import CONTROL_CHANNEL
from app.domain.sessions.reader import SessionReader
from app.domain.sessions.schemas import SessionCreate, SessionFork, SessionUpdate
from app.domain.sessions.services import SessionInfra
from app.domain.sessions.warming import CacheWarmer
from app.domain.webhooks.controllers import WebhookEndpointController
from app.domain.webhooks.delivery import WebhookDispatcher
from app.domain.webhooks.outbox import enqueue_for_run
from app.domain.webhooks.schemas import WebhookEndpointCreate
from app.lib import cors, docs, edge, gc_tuning, metrics, migrations, openapi, routing, tracing, worker_signals
from app.lib import logging as app_logging
from app.lib.client_address import ProxyHeadersMiddleware, TrustedProxies
from app.lib.db import idle_pre_ping, lazy_autocommit_handler
from app.lib.problems import ERROR_CODES_DOC, exception_handlers, is_database_unavailable
from app.lib.valkey.control import ControlChannel, SignalMarker
from app.lib.valkey.event_log import EventLog
from app.lib.valkey.lease import RunLease
from app.lib.valkey.lock import DistributedLock
from app.lib.valkey.plugin import ValkeyPlugin, ValkeyPluginConfig
from app.lib.valkey.presence import InstancePresence
from app.lib.valkey.rate_limiter import FixedWindowRateLimiter
from app.lib.valkey.versioned_cache import VersionedCache

# Request bodies whose OpenAPI schema is made as strict as their validators (see app.lib.openapi).
REQUEST_BODIES = (
    SessionCreate,
    SessionUpdate,
    SessionFork,
    QueryRequest,
    RunRequest,
    AnswerRequest,
    WebhookEndpointCreate,
    ChatCompletionRequest,
    ResponseCreateRequest,
)

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MAX_BODY_BYTES = 1024 * 1024
IDEMPOTENCY_PURGE_INTERVAL = 600.0
PUBLIC_PATHS = ["^/health/", "^/docs", "^/metrics", "^/schema"]
# Backoff of the startup database work while Postgres is down (seconds).
STARTUP_RETRY_MIN = 0.5
STARTUP_RETRY_MAX = 5.0


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


class AgentApiPlugin(InitPluginProtocol, CLIPluginProtocol):
    """Wires the domains: shared state, startup work and our CLI commands."""

    def __init__(self, settings: Settings, alchemy: SQLAlchemyAsyncConfig, valkey: ValkeyPlugin) -> None:
        self.settings = settings
        self.alchemy = alchemy
        self.valkey = valkey
        self.startup_work = StartupWork()
        self.startup_retry: asyncio.Task[None] | None = None

    def on_cli_init(self, cli: object) -> None:
        from app.domain.keys.cli import keys_group

        cli.add_command(keys_group)  # type: ignore[attr-defined]

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        settings = self.settings
        clients = self.valkey.clients
        backend = build_backend(settings, self.alchemy)
        cache = SessionCache(
            VersionedCache(clients.main, ttl=settings.sessions.cache_ttl, getter=clients.getter),
            on_missed_write=PendingInvalidations(self.alchemy).record,
        )
        infra = SessionInfra(
            cache=cache,
            lock=DistributedLock(
                clients.main,
                blocking=clients.blocking,
                ttl_ms=settings.sessions.lock_ttl_ms,
                timeout=settings.sessions.lock_timeout,
                observe=observe_lock,
            ),
            lease=RunLease(clients.main, ttl_ms=settings.runs.lease_ttl_ms),
            events=EventLog(clients.main, clients.blocking),
            control=ControlChannel(clients.main, clients.blocking, CONTROL_CHANNEL),
            markers=SignalMarker(clients.main),
            check_agent_settings=settings_check(backend),
            run_event_hook=enqueue_for_run,
        )
        store = RunStore(self.alchemy, infra.cache, hook=enqueue_for_run)
        self.run_manager = RunManager(
            settings,
            store=store,
            lease=infra.lease,
            events=infra.events,
            channel=infra.control,
            markers=infra.markers,
            backend=backend,
        )
        self.follower = EventFollower(infra.events, infra.lease, store, self.alchemy, settings.runs.ping_interval)
        self.presence = InstancePresence(
            clients.main,
            settings.app.instance_id,
            ttl=settings.runs.presence_ttl,
            interval=settings.runs.presence_interval,
        )
        self.reaper = RunReaper(settings, self.run_manager, store, self.presence)
        reader = SessionReader(infra, self.alchemy)
        self.idempotency = IdempotencyStore(self.alchemy)
        self._purge: asyncio.Task[None] | None = None
        self.webhooks = WebhookDispatcher(settings, self.alchemy)
        self.warmer = CacheWarmer(
            infra.cache,
            self.alchemy,
            clients.main,
            count=settings.sessions.cache_warm_count,
            timeout=settings.sessions.cache_warm_timeout,
            instance_id=settings.app.instance_id,
        )
        self.sweeper = InvalidationSweeper(
            cache,
            self.alchemy,
            interval=settings.sessions.cache_sweep_interval,
            batch=settings.sessions.cache_sweep_batch,
        )
        app_config.state.update(
            {
                "settings": settings,
                "alchemy_config": self.alchemy,
                "authenticator": build_authenticator(settings, self.alchemy, self.valkey),
                "session_infra": infra,
                "session_reader": reader,
                "run_manager": self.run_manager,
                "run_service": RunService(reader, self.run_manager, store, self.follower),
                "idempotency_store": self.idempotency,
                "event_follower": self.follower,
                "run_reaper": self.reaper,
                "startup_work": self.startup_work,
            }
        )
        # Under Granian, SIGTERM drains first, while the server still serves (SPEC §6); elsewhere the lifespan
        # shutdown does.
        worker_signals.drain_before_worker_stop(self.drain)
        app_config.on_startup.insert(0, self.prepare_database)
        app_config.on_startup.append(self.start_background_work)
        # Last: what startup built is frozen out of the collector's scans.
        gc_thresholds = gc_tuning.parse_thresholds(settings.app.gc_thresholds)
        app_config.on_startup.append(
            lambda: gc_tuning.tune_after_startup(freeze=settings.app.gc_freeze, thresholds=gc_thresholds)
        )
        # Before the Valkey clients close: finishing runs still need them.
        app_config.on_shutdown.insert(0, self.stop_background_work)
        return app_config

    async def start_background_work(self) -> None:
        await self.run_manager.start_listening()
        self.presence.start()
        self.reaper.start()
        self._purge = asyncio.create_task(self._purge_expired_idempotency_keys(), name="idempotency-purge")
        self.webhooks.start()
        self.sweeper.start()
        # In the background: readiness never waits for it.
        self.warmer.start()

    async def drain(self) -> None:
        """New runs get 503; running ones get their grace period, then are interrupted and end with `done`;
        then streams following runs elsewhere end (clients rejoin another instance with Last-Event-ID)."""
        await self.run_manager.drain()
        self.follower.close()

    async def _purge_expired_idempotency_keys(self) -> None:
        while True:
            await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL)
            try:
                await self.idempotency.purge_expired()
            except Exception:
                logger.debug("idempotency purge failed", exc_info=True)

    async def stop_background_work(self) -> None:
        if self._purge is not None:
            self._purge.cancel()
        if self.startup_retry is not None:
            self.startup_retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.startup_retry
        await self.warmer.stop()
        await self.sweeper.stop()
        await self.reaper.stop()
        await self.drain()  # at once if SIGTERM already drained (app.lib.worker_signals)
        await self.run_manager.close()
        # Last: until here this instance's runs were its own; now the others may take over at once.
        await self.presence.stop()
        await self.webhooks.stop()  # after the runs: their final events are in the outbox, any instance sends them

    async def prepare_database(self) -> None:
        """Migrations and the bootstrap key. With Postgres down the server starts anyway (live, not ready) and
        retries in the background; `/health/ready` is 503 `starting` until it is done."""
        try:
            await self._prepare_database()
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.warning("Postgres unavailable at startup: serving, not ready; retrying the startup work")
            self.startup_retry = asyncio.create_task(self._retry_prepare_database(), name="startup-database-work")
        else:
            self.startup_work.done = True

    async def _prepare_database(self) -> None:
        if self.settings.db.migrate_on_startup:
            await migrations.upgrade(self.alchemy)
        if self.settings.app.api_key:
            async with self.alchemy.get_session() as db:
                await ApiKeyService(session=db).ensure_bootstrap(self.settings.app.api_key)

    async def _retry_prepare_database(self) -> None:
        delay = STARTUP_RETRY_MIN
        while True:
            await asyncio.sleep(delay)
            try:
                await self._prepare_database()
            except Exception as exc:
                if not is_database_unavailable(exc):
                    logger.exception("startup database work failed; not retrying (the instance stays not ready)")
                    return
                delay = min(delay * 2, STARTUP_RETRY_MAX)
            else:
                self.startup_work.done = True
                logger.info("startup database work done: ready")
                return


def observe_lock(outcome: str, waited: float) -> None:
    metrics.lock_acquisitions.labels(outcome).inc()
    metrics.lock_wait_seconds.observe(waited)


def build_alchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    config = SQLAlchemyAsyncConfig(
        connection_string=settings.db.async_url,
        before_send_handler="autocommit",
        session_config=AsyncSessionConfig(expire_on_commit=False),
        engine_config=EngineConfig(
            pool_size=settings.db.pool_size,
            max_overflow=settings.db.max_overflow,
            # Pinged only after idling (app.lib.db.idle_pre_ping): a ping at every checkout was 3 round trips.
            pool_pre_ping=False,
            pool_timeout=max(1, round(settings.db.pool_timeout)),
            echo=settings.db.echo,
            connect_args={"timeout": settings.db.connect_timeout, "command_timeout": settings.db.command_timeout},
        ),
        alembic_config=AlembicAsyncConfig(
            script_location=str(MIGRATIONS_DIR),
            version_table_name="alembic_version",
        ),
        create_all=False,
    )
    config.before_send_handler = lazy_autocommit_handler(config.session_scope_key)
    ping_idle = settings.db.pool_ping_idle
    config.create_engine_callable = lambda url, **kw: idle_pre_ping(create_async_engine(url, **kw), ping_idle)
    return config


def build_authenticator(
    settings: Settings, alchemy: SQLAlchemyAsyncConfig, valkey: ValkeyPlugin
) -> ApiKeyAuthenticator:
    limit = settings.app.auth_failures_per_minute
    failures = (
        AuthFailureLimiter(FixedWindowRateLimiter(valkey.clients.main, limit=limit), limit=limit) if limit > 0 else None
    )
    return ApiKeyAuthenticator(
        alchemy,
        settings.app.auth_cache_ttl,
        failures=failures,
        negative_ttl=settings.app.auth_negative_cache_ttl,
        negative_size=settings.app.auth_negative_cache_size,
    )


def build_rate_limiters(settings: Settings, valkey: ValkeyPlugin) -> dict[str, FixedWindowRateLimiter]:
    # Runs count against the default budget too; their own budget exists only when set (> 0).
    limits = {DEFAULT_GROUP: settings.app.rate_limit_per_minute, RUNS_GROUP: settings.app.rate_limit_runs_per_minute}
    return {
        group: FixedWindowRateLimiter(valkey.clients.main, limit=limit) for group, limit in limits.items() if limit > 0
    }


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    # Bad values fail here, at startup, with the setting's name.
    proxies = TrustedProxies.from_strings(settings.app.trusted_proxies)
    cors_config = cors.build_cors_config(
        settings.app.cors_allow_origins, allow_credentials=settings.app.cors_allow_credentials
    )
    if not settings.db.url or not settings.valkey.url:
        # The CLI starts embedded servers and sets both; a bare import (e.g. docs tooling) gets placeholders.
        logger.debug("DATABASE_URL or VALKEY_URL unset: the app will fail at startup unless started by `agent-api run`")
    alchemy = build_alchemy_config(settings)
    valkey = ValkeyPlugin(
        ValkeyPluginConfig(
            url=settings.valkey.url or "redis://127.0.0.1:6379/0",
            socket_timeout=settings.valkey.socket_timeout,
            connect_timeout=settings.valkey.connect_timeout,
            max_connections=settings.valkey.max_connections,
        )
    )
    # Request metrics are counted at the ASGI edge (app.lib.metrics.install), where the status is the one sent.
    middleware: list[Any] = [DefineMiddleware(ApiKeyAuthMiddleware, exclude=PUBLIC_PATHS)]
    limiters = build_rate_limiters(settings, valkey)
    if limiters:
        # Inside authentication: the subject is the key's id.
        middleware.append(RateLimitMiddleware(limiters))
    # Inside the rate limiter: a refused request claims no Idempotency-Key.
    middleware.append(IdempotencyMiddleware())
    otel = tracing.build_otel_plugin(
        enabled=settings.app.otel_enabled, endpoint=settings.app.otel_endpoint, instance_id=settings.app.instance_id
    )
    if otel is not None:
        middleware.insert(0, tracing.RouteSpanNameMiddleware)
    app = Litestar(
        route_handlers=[
            HealthController,
            SessionController,
            RunController,
            RunResourceController,
            WebhookEndpointController,
            openai_router,
            MetricsController,
            docs.swagger_assets_router(),
        ],
        plugins=[
            app_logging.build_structlog_plugin(
                level=settings.app.log_level, fmt=settings.app.log_format, instance_id=settings.app.instance_id
            ),
            SQLAlchemyPlugin(config=alchemy),
            valkey,
            AgentApiPlugin(settings, alchemy, valkey),
            GranianPlugin(),
            *([otel] if otel is not None else []),
        ],
        middleware=middleware,
        exception_handlers=exception_handlers(),
        request_max_body_size=MAX_BODY_BYTES,
        cors_config=cors_config,
        openapi_config=OpenAPIConfig(
            title="Agent API",
            version="1.0.0",
            description="Runs Claude agent sessions for REST and Server-Sent-Events clients.\n\n" + ERROR_CODES_DOC,
            path="/docs",
            render_plugins=[docs.swagger_render_plugin()],
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                    "Bearer": SecurityScheme(type="http", scheme="bearer"),
                }
            ),
            security=[{"ApiKey": []}, {"Bearer": []}],
        ),
        debug=settings.app.debug,
    )
    cors.install(app)
    edge.install(app)
    if settings.app.metrics_enabled:
        metrics.install(app, app_name="agent_api")
    app_logging.install(
        app,
        instance_id=settings.app.instance_id,
        access_log=settings.app.log_access,
        fmt=settings.app.log_format,
    )
    if proxies:
        # Outermost: the access log, the limits and `request.client` see the resolved client address.
        app.asgi_handler = ProxyHeadersMiddleware(app.asgi_handler, proxies)
    openapi.tighten_app_schema(app, REQUEST_BODIES)
    document_streams(app.openapi_schema)
    routing.fix_options_allow(app)
    return app
