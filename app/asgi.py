"""`create_app()`: assembles settings, plugins, routes, middleware and exception handlers."""

from __future__ import annotations

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

from app.components import AppComponents
from app.config.settings import Settings, get_settings
from app.domain.health.controllers import HealthController
from app.domain.idempotency.middleware import IdempotencyMiddleware
from app.domain.keys.auth import ApiKeyAuthMiddleware
from app.domain.keys.rate_limit import RateLimitMiddleware
from app.domain.openai.controllers import document_streams, openai_router
from app.domain.openai.schemas import ChatCompletionRequest, ResponseCreateRequest
from app.domain.runs.controllers import RunController, RunResourceController
from app.domain.runs.schemas import AnswerRequest, QueryRequest, RunRequest
from app.domain.sessions import read_shortcut
from app.domain.sessions.controllers import SessionController
from app.domain.sessions.schemas import SessionCreate, SessionFork, SessionUpdate
from app.domain.webhooks.controllers import WebhookEndpointController
from app.domain.webhooks.schemas import WebhookEndpointCreate
from app.lib import cors, docs, edge, metrics, openapi, tracing
from app.lib import logging as app_logging
from app.lib.client_address import ProxyHeadersMiddleware, TrustedProxies
from app.lib.compat.alchemy_autocommit import idle_pre_ping, lazy_autocommit_handler
from app.lib.compat.asgi_wrapping import wrap_asgi_handler
from app.lib.compat.litestar_options import fix_options_allow
from app.lib.problems import ERROR_CODES_DOC, exception_handlers
from app.lib.request_limits import MAX_BODY_BYTES
from app.lib.valkey.plugin import ValkeyPlugin, ValkeyPluginConfig
from app.lifespan import AppLifespan

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
PUBLIC_PATHS = ["^/health/", "^/docs", "^/metrics", "^/schema"]


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


class AgentApiPlugin(InitPluginProtocol, CLIPluginProtocol):
    """Hands the app its components (as dependencies), its lifespan and our CLI commands."""

    def __init__(self, components: AppComponents) -> None:
        self.components = components

    def on_cli_init(self, cli: object) -> None:
        from app.domain.keys.cli import keys_group

        cli.add_command(keys_group)  # type: ignore[attr-defined]

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.dependencies.update(self.components.dependencies())
        # For the CLI (`agent-api keys`) and tests, which hold the app and not a request.
        app_config.state.update(
            {
                "components": self.components,
                "settings": self.components.settings,
                "alchemy_config": self.components.alchemy,
            }
        )
        app_config.lifespan.append(AppLifespan(self.components))
        return app_config


def build_alchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    config = SQLAlchemyAsyncConfig(
        connection_string=settings.db.async_url,
        before_send_handler="autocommit",
        session_config=AsyncSessionConfig(expire_on_commit=False),
        engine_config=EngineConfig(
            pool_size=settings.db.pool_size,
            max_overflow=settings.db.max_overflow,
            # Pinged only after idling (alchemy_autocommit.idle_pre_ping): a ping per checkout was 3 round trips.
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


def build_middleware(components: AppComponents, *, traced: bool) -> list[Any]:
    """Litestar's middleware, outermost first. (Request metrics, the request context and the edge checks sit
    further out, around Litestar's whole handler: see the `install` calls in `create_app`.)"""
    middleware: list[Any] = [
        DefineMiddleware(ApiKeyAuthMiddleware, exclude=PUBLIC_PATHS, authenticator=components.authenticator)
    ]
    if components.rate_limiters:
        # Inside authentication: the subject is the key's id.
        middleware.append(RateLimitMiddleware(components.rate_limiters))
    # Inside the rate limiter: a refused request claims no Idempotency-Key.
    middleware.append(IdempotencyMiddleware(components.idempotency_store, components.run_service))
    if traced:
        middleware.insert(0, tracing.RouteSpanNameMiddleware)
    return middleware


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
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
    )


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
            cluster=settings.valkey.cluster,
        )
    )
    components = AppComponents.build(settings, alchemy, valkey.clients)
    otel = tracing.build_otel_plugin(
        enabled=settings.app.otel_enabled, endpoint=settings.app.otel_endpoint, instance_id=settings.app.instance_id
    )
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
            AgentApiPlugin(components),
            GranianPlugin(),
            *([otel] if otel is not None else []),
        ],
        middleware=build_middleware(components, traced=otel is not None),
        exception_handlers=exception_handlers(),
        request_max_body_size=MAX_BODY_BYTES,
        cors_config=cors_config,
        openapi_config=openapi_config(),
        debug=settings.app.debug,
    )
    if settings.app.read_shortcut and not components.rate_limiters and otel is None:
        # Innermost of our layers, so CORS, the edge, the metrics and the access log see its answers too.
        read_shortcut.install(app, authenticator=components.authenticator, cache=components.session_reader.cache)
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
        wrap_asgi_handler(app, lambda inner: ProxyHeadersMiddleware(inner, proxies))
    openapi.tighten_app_schema(app, REQUEST_BODIES)
    document_streams(app.openapi_schema)
    fix_options_allow(app)
    return app
