"""`WebhookDispatcher`: every instance delivers from the Postgres outbox (`webhook_delivery`).

Claiming: one statement locks endpoints that have due deliveries (`FOR NO KEY UPDATE SKIP LOCKED`, so two
claimers never pick work of one endpoint at once) and marks up to WEBHOOK_ENDPOINT_CONCURRENCY of their due rows
(minus those already in flight anywhere) with this instance's claim token and a lease (`claimed_until`). A
claim outlives every attempt it covers (lease >= timeout + 5 s, and an attempt that could not finish within
its lease is not started), so no delivery is ever attempted by two instances at once; a dead claimer's rows
become due again when their lease ends. Results are written fenced on the claim token.

Waking: a Postgres NOTIFY sent in the enqueuing transaction reaches every instance on commit; a poll every
WEBHOOK_POLL_INTERVAL (sooner when a retry falls due) covers missed notices. Valkey is not involved."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import text

from app.config.settings import Settings, WebhookSettings
from app.domain.webhooks import ssrf
from app.domain.webhooks.outbox import NOTIFY_CHANNEL
from app.domain.webhooks.signing import signed_headers
from app.lib import metrics
from app.lib.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "agent-api-webhooks/1.0"

CLAIM_SQL = text(
    """
WITH ep AS (
    SELECT e.id FROM webhook_endpoint e
    WHERE EXISTS (
        SELECT 1 FROM webhook_delivery d
        WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
          AND (d.claimed_until IS NULL OR d.claimed_until <= now())
    )
    ORDER BY random()
    LIMIT :free
    FOR NO KEY UPDATE OF e SKIP LOCKED
),
busy AS (
    SELECT d.endpoint_id, count(*) AS n
    FROM webhook_delivery d JOIN ep ON ep.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.claimed_until > now()
    GROUP BY d.endpoint_id
),
cand AS (
    SELECT d.id, d.endpoint_id, d.next_attempt_at,
           row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rn
    FROM webhook_delivery d JOIN ep ON ep.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.claimed_until IS NULL OR d.claimed_until <= now())
),
pick AS (
    SELECT cand.id FROM cand LEFT JOIN busy USING (endpoint_id)
    WHERE cand.rn <= :per_endpoint - coalesce(busy.n, 0)
    ORDER BY cand.next_attempt_at
    LIMIT :free
)
UPDATE webhook_delivery w
SET claimed_by = :me, claim_token = :token, claimed_until = now() + make_interval(secs => :lease)
FROM pick, webhook_endpoint e
WHERE w.id = pick.id AND e.id = w.endpoint_id AND w.status = 'pending'
  AND (w.claimed_until IS NULL OR w.claimed_until <= now())
RETURNING w.id, w.event_id, w.payload, w.attempts, w.created_at, e.url, e.secret
"""
)

NEXT_DUE_SQL = text(
    """
SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))
FROM webhook_delivery
WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until <= now())
"""
)

RECORD_SQL = text(
    """
UPDATE webhook_delivery SET
    attempts = attempts + 1,
    response_status = :response_status,
    last_error = :error,
    last_attempt_at = now(),
    updated_at = now(),
    status = CASE
        WHEN :ok THEN 'delivered'
        WHEN created_at + make_interval(secs => :horizon) < now() + make_interval(secs => :delay) THEN 'failed'
        ELSE 'pending' END,
    delivered_at = CASE WHEN :ok THEN now() ELSE NULL END,
    next_attempt_at = CASE WHEN :ok THEN next_attempt_at ELSE now() + make_interval(secs => :delay) END,
    claimed_by = NULL, claim_token = NULL, claimed_until = NULL
WHERE id = :id AND claim_token = :token
RETURNING status
"""
)

RELEASE_SQL = text(
    "UPDATE webhook_delivery SET claimed_by = NULL, claim_token = NULL, claimed_until = NULL "
    "WHERE id = :id AND claim_token = :token"
)


@dataclass(frozen=True)
class Claimed:
    id: UUID
    event_id: str
    payload: bytes
    attempts: int
    created_at: datetime
    url: str
    secret: str
    token: UUID
    claimed_at: float
    """time.monotonic() before the claim was sent: the lease ends no sooner than claimed_at + lease."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    kind: str
    response_status: int | None = None
    error: str | None = None


def retry_delay(cfg: WebhookSettings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: initial, doubling, jittered, capped."""
    base = cfg.retry_initial_delay * float(2 ** min(max(attempts - 1, 0), 40))
    jittered = base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter only
    return max(0.0, min(cfg.retry_max_delay, jittered))


def _resolve(future: asyncio.Future[None], *_args: Any) -> None:
    if not future.done():
        future.set_result(None)


def asyncpg_dsn(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class WebhookDispatcher:
    def __init__(self, settings: Settings, alchemy: SQLAlchemyAsyncConfig) -> None:
        self.cfg = settings.webhooks
        self.database_url = settings.db.url
        self.connect_timeout = settings.db.connect_timeout
        self.alchemy = alchemy
        self.instance_id = settings.app.instance_id
        self.lease = max(self.cfg.claim_lease, self.cfg.timeout + 5.0)
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Claimed] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._tls_client: httpx.AsyncClient | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=self.cfg.concurrency)
        common: dict[str, Any] = {"follow_redirects": False, "trust_env": False, "timeout": self.cfg.timeout}
        self._client = httpx.AsyncClient(limits=limits, **common)
        # HTTPS to a pinned address: a pooled connection is keyed by that address, yet its TLS session belongs
        # to one host name (SNI); never reuse it for another name on the same address.
        self._tls_client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0), **common
        )
        self._tasks = [
            asyncio.create_task(self._loop(), name="webhook-dispatcher"),
            asyncio.create_task(self._listen(), name="webhook-listener"),
        ]

    async def stop(self) -> None:
        """Stops claiming, gives attempts in flight their timeout to finish, then releases what is left."""
        self._stopping = True
        await cancel_and_wait(*self._tasks)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=self.cfg.timeout + 1)
        leftovers = dict(self._inflight)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(list(leftovers), timeout=2)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3), self.alchemy.get_session() as db:
                    for claimed in leftovers.values():
                        await db.execute(RELEASE_SQL, {"id": claimed.id, "token": claimed.token})
                    await db.commit()
        for client in (self._client, self._tls_client):
            if client is not None:
                await client.aclose()

    def wake(self) -> None:
        self._wake.set()

    # -- claiming --------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            delay = self.cfg.poll_interval
            try:
                free = self.cfg.concurrency - len(self._inflight)
                if free > 0:
                    claimed = await self.claim(free)
                    for item in claimed:
                        task = asyncio.create_task(self._deliver(item), name=f"webhook-{item.id}")
                        self._inflight[task] = item
                        task.add_done_callback(self._done)
                    next_due = await self.next_due()  # after the attempts are under way
                    if next_due is not None:
                        if next_due > 0:
                            delay = min(delay, next_due)
                        elif claimed and len(self._inflight) < self.cfg.concurrency:
                            delay = 0.0  # more is due; endpoints at their limit are skipped next time round
                failures = 0
            except Exception:
                failures += 1
                logger.warning("webhooks: could not claim deliveries", exc_info=failures == 1)
                delay = min(self.cfg.poll_interval * (2 ** min(failures, 5)), 30.0)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()

    async def claim(self, free: int) -> list[Claimed]:
        """Claims up to `free` due deliveries."""
        token = uuid4()
        started = time.monotonic()
        async with self.alchemy.get_session() as db:
            rows = (
                await db.execute(
                    CLAIM_SQL,
                    {
                        "free": free,
                        "per_endpoint": self.cfg.endpoint_concurrency,
                        "me": self.instance_id,
                        "token": token,
                        "lease": self.lease,
                    },
                )
            ).all()
            await db.commit()
        return [
            Claimed(
                id=row.id,
                event_id=row.event_id,
                payload=bytes(row.payload),
                attempts=row.attempts,
                created_at=row.created_at,
                url=row.url,
                secret=row.secret,
                token=token,
                claimed_at=started,
            )
            for row in rows
        ]

    async def next_due(self) -> float | None:
        """Seconds until the next unclaimed pending delivery is due (<= 0: due now); None: there is none."""
        async with self.alchemy.get_session() as db:
            value = (await db.execute(NEXT_DUE_SQL)).scalar_one_or_none()
            await db.commit()
        return float(value) if value is not None else None

    # -- delivering ------------------------------------------------------------------------------------

    async def _deliver(self, item: Claimed) -> None:
        if time.monotonic() - item.claimed_at > self.lease - self.cfg.timeout - 2.0:
            # Too late to finish within the claim: another instance may take it over meanwhile.
            await self._release(item)
            return
        outcome = await self.attempt(item)
        metrics.webhook_attempts.labels(outcome.kind).inc()
        await self._record(item, outcome)

    async def attempt(self, item: Claimed) -> Outcome:
        """One signed POST, bounded by WEBHOOK_TIMEOUT as a whole (DNS, connect, send, response)."""
        assert self._client is not None
        assert self._tls_client is not None
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signed_headers(item.secret, item.event_id, timestamp, item.payload),
        }
        try:
            async with asyncio.timeout(self.cfg.timeout):
                target = await ssrf.checked_target(item.url, allow_private=self.cfg.allow_private_networks)
                client = self._tls_client if target.extensions else self._client
                request = client.build_request(
                    "POST",
                    target.url,
                    content=item.payload,
                    headers={**headers, **target.headers},
                    extensions=target.extensions,
                )
                response = await client.send(request, stream=True)
                try:
                    received = 0
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        if received >= MAX_RESPONSE_BYTES:
                            break  # the rest is not read
                finally:
                    await response.aclose()
        except TimeoutError:
            return Outcome(False, "timeout", error=f"no response within {self.cfg.timeout:g} s")
        except (ssrf.RefusedWebhookUrl, ssrf.InvalidWebhookUrl) as exc:
            return Outcome(False, "refused", error=str(exc)[:500])
        except httpx.HTTPError as exc:
            return Outcome(False, "network_error", error=f"{type(exc).__name__}: {exc}"[:500])
        except OSError as exc:
            return Outcome(False, "network_error", error=f"{type(exc).__name__}: {exc}"[:500])
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(True, "success", response_status=status)
        return Outcome(False, "http_error", response_status=status, error=f"HTTP {status}")

    async def _record(self, item: Claimed, outcome: Outcome) -> None:
        params = {
            "id": item.id,
            "token": item.token,
            "ok": outcome.ok,
            "response_status": outcome.response_status,
            "error": outcome.error,
            "horizon": self.cfg.retry_horizon,
            "delay": retry_delay(self.cfg, item.attempts + 1),
        }
        pause = 0.1
        for attempt in range(8):
            try:
                async with self.alchemy.get_session() as db:
                    status = (await db.execute(RECORD_SQL, params)).scalar_one_or_none()
                    await db.commit()
                break
            except Exception:
                logger.warning("webhooks: could not record attempt of %s (try %d)", item.id, attempt + 1, exc_info=True)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        else:
            # Its claim runs out and another attempt follows: at-least-once.
            logger.error("webhooks: gave up recording delivery %s", item.id)
            return
        if status in ("delivered", "failed"):
            metrics.webhook_deliveries.labels(status).inc()
        if status == "delivered":
            created = item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC)
            metrics.webhook_delivery_seconds.observe(max(0.0, (datetime.now(UTC) - created).total_seconds()))
        elif status is None:
            logger.warning("webhooks: delivery %s was deleted or taken over before its result was recorded", item.id)

    async def _release(self, item: Claimed) -> None:
        with contextlib.suppress(Exception):
            async with self.alchemy.get_session() as db:
                await db.execute(RELEASE_SQL, {"id": item.id, "token": item.token})
                await db.commit()

    # -- notifications ---------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnects after Postgres outages."""
        pause = 0.5
        while not self._stopping:
            conn: Any = None
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self.database_url), timeout=self.connect_timeout)
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(functools.partial(_resolve, lost))
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_args: self._wake.set())
                pause = 0.5
                self._wake.set()  # anything committed while not listening
                while not lost.done():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(15):
                            await asyncio.shield(lost)
                    if not lost.done():
                        async with asyncio.timeout(5):
                            await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.debug("webhooks: LISTEN connection failed; reconnecting", exc_info=True)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
