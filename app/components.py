"""`AppComponents`: every app-level object, built once in one place with its collaborators.

`create_app()` builds one; its `dependencies()` make them Litestar dependencies (handlers and request-scoped
providers name them as parameters), middleware get theirs at construction, and `app.lifespan` starts and
stops the ones that run in the background."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar.di import Provide

from app.agents.base import AgentBackend
from app.config.settings import Settings
from app.domain.health.controllers import StartupWork
from app.domain.idempotency.store import IdempotencyStore
from app.domain.keys.auth import ApiKeyAuthenticator
from app.domain.keys.rate_limit import DEFAULT_GROUP, RUNS_GROUP, AuthFailureLimiter
from app.domain.openai.services import ModelCatalog
from app.domain.runs.backend import build_backend
from app.domain.runs.manager import RunManager
from app.domain.runs.reaper import RunReaper
from app.domain.runs.services import RunService
from app.domain.runs.store import RunStore
from app.domain.runs.streams import EventFollower
from app.domain.sessions.cache import SessionCache
from app.domain.sessions.creator import SessionCreator
from app.domain.sessions.invalidations import InvalidationSweeper, PendingInvalidations
from app.domain.sessions.reader import SessionReader
from app.domain.sessions.services import SessionServiceFactory
from app.domain.sessions.valkey_keys import CONTROL_ANNOUNCE_CHANNEL
from app.domain.sessions.warming import CacheWarmer
from app.domain.webhooks.delivery import WebhookDispatcher
from app.domain.webhooks.outbox import enqueue_for_run
from app.lib import metrics
from app.lib.valkey.client import ValkeyClients
from app.lib.valkey.control import ControlChannel, SignalMarker
from app.lib.valkey.event_log import EventLog
from app.lib.valkey.lease import RunLease
from app.lib.valkey.lock import DistributedLock
from app.lib.valkey.presence import InstancePresence
from app.lib.valkey.rate_limiter import FixedWindowRateLimiter
from app.lib.valkey.stream_hub import StreamHub, wake_key
from app.lib.valkey.versioned_cache import VersionedCache


def observe_lock(outcome: str, waited: float) -> None:
    metrics.lock_acquisitions.labels(outcome).inc()
    metrics.lock_wait_seconds.observe(waited)


@dataclass
class AppComponents:
    settings: Settings
    alchemy: SQLAlchemyAsyncConfig
    valkey: ValkeyClients
    backend: AgentBackend
    session_cache: SessionCache
    session_services: SessionServiceFactory
    session_reader: SessionReader
    session_creator: SessionCreator
    run_store: RunStore
    run_manager: RunManager
    run_service: RunService
    event_follower: EventFollower
    presence: InstancePresence
    run_reaper: RunReaper
    idempotency_store: IdempotencyStore
    authenticator: ApiKeyAuthenticator
    rate_limiters: dict[str, FixedWindowRateLimiter]
    webhooks: WebhookDispatcher
    cache_warmer: CacheWarmer
    invalidation_sweeper: InvalidationSweeper
    model_catalog: ModelCatalog
    startup_work: StartupWork

    @classmethod
    def build(cls, settings: Settings, alchemy: SQLAlchemyAsyncConfig, valkey: ValkeyClients) -> AppComponents:
        """Opens nothing: clients connect lazily and background work starts in the lifespan."""
        backend = build_backend(settings, alchemy)
        cache = SessionCache(
            VersionedCache(valkey.main, ttl=settings.sessions.cache_ttl, getter=valkey.getter),
            on_missed_write=PendingInvalidations(alchemy).record,
        )
        lease = RunLease(valkey.main, ttl_ms=settings.runs.lease_ttl_ms)
        events = EventLog(valkey.main, valkey.blocking, appender=valkey.appender)
        store = RunStore(alchemy, cache, hook=enqueue_for_run)
        run_manager = RunManager(
            settings,
            store=store,
            lease=lease,
            events=events,
            channel=ControlChannel(
                valkey.main,
                valkey.blocking,
                settings.app.instance_id,
                announce=None if settings.valkey.cluster else CONTROL_ANNOUNCE_CHANNEL,
            ),
            markers=SignalMarker(valkey.main, getter=valkey.getter),
            backend=backend,
        )
        session_services = SessionServiceFactory(
            alchemy=alchemy,
            cache=cache,
            lock=DistributedLock(
                valkey.main,
                blocking=valkey.blocking,
                ttl_ms=settings.sessions.lock_ttl_ms,
                timeout=settings.sessions.lock_timeout,
                observe=observe_lock,
            ),
            runs=run_manager,
        )
        session_reader = SessionReader(cache, session_services)
        # One node: followers share one blocking reader. A cluster: each follows on its own (a multi-key XREAD
        # cannot span the sessions' slots).
        hub = (
            None
            if settings.valkey.cluster
            else StreamHub(events, valkey.main, valkey.blocking, wake_key(settings.app.instance_id))
        )
        follower = EventFollower(events, lease, store, alchemy, settings.runs.ping_interval, hub=hub)
        presence = InstancePresence(
            valkey.main,
            settings.app.instance_id,
            ttl=settings.runs.presence_ttl,
            interval=settings.runs.presence_interval,
        )
        return cls(
            settings=settings,
            alchemy=alchemy,
            valkey=valkey,
            backend=backend,
            session_cache=cache,
            session_services=session_services,
            session_reader=session_reader,
            session_creator=SessionCreator(alchemy, cache, run_manager),
            run_store=store,
            run_manager=run_manager,
            run_service=RunService(session_reader, run_manager, store, follower),
            event_follower=follower,
            presence=presence,
            run_reaper=RunReaper(settings, run_manager, store, presence),
            idempotency_store=IdempotencyStore(alchemy),
            authenticator=build_authenticator(settings, alchemy, valkey),
            rate_limiters=build_rate_limiters(settings, valkey),
            webhooks=WebhookDispatcher(settings, alchemy),
            cache_warmer=CacheWarmer(
                cache,
                alchemy,
                valkey.main,
                count=settings.sessions.cache_warm_count,
                timeout=settings.sessions.cache_warm_timeout,
                instance_id=settings.app.instance_id,
            ),
            invalidation_sweeper=InvalidationSweeper(
                cache,
                alchemy,
                interval=settings.sessions.cache_sweep_interval,
                batch=settings.sessions.cache_sweep_batch,
            ),
            model_catalog=ModelCatalog(settings, backend),
            startup_work=StartupWork(),
        )

    def dependencies(self) -> dict[str, Provide]:
        """The app-level objects handlers and providers may name (each is one object for the app's life)."""
        named: dict[str, Any] = {
            "settings": self.settings,
            "alchemy_config": self.alchemy,
            "valkey_clients": self.valkey,
            "session_services": self.session_services,
            "session_reader": self.session_reader,
            "session_creator": self.session_creator,
            "run_manager": self.run_manager,
            "run_service": self.run_service,
            "model_catalog": self.model_catalog,
            "startup_work": self.startup_work,
        }
        return {name: Provide(_constant(value), use_cache=True, sync_to_thread=False) for name, value in named.items()}


def _constant(value: Any) -> Any:
    def provide() -> Any:
        return value

    return provide


def build_authenticator(
    settings: Settings, alchemy: SQLAlchemyAsyncConfig, valkey: ValkeyClients
) -> ApiKeyAuthenticator:
    limit = settings.app.auth_failures_per_minute
    failures = AuthFailureLimiter(FixedWindowRateLimiter(valkey.main, limit=limit), limit=limit) if limit > 0 else None
    return ApiKeyAuthenticator(
        alchemy,
        settings.app.auth_cache_ttl,
        failures=failures,
        negative_ttl=settings.app.auth_negative_cache_ttl,
        negative_size=settings.app.auth_negative_cache_size,
    )


def build_rate_limiters(settings: Settings, valkey: ValkeyClients) -> dict[str, FixedWindowRateLimiter]:
    # Runs count against the default budget too; their own budget exists only when set (> 0).
    limits = {DEFAULT_GROUP: settings.app.rate_limit_per_minute, RUNS_GROUP: settings.app.rate_limit_runs_per_minute}
    return {group: FixedWindowRateLimiter(valkey.main, limit=limit) for group, limit in limits.items() if limit > 0}
