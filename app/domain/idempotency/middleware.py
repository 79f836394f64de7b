"""`IdempotencyMiddleware`: `Idempotency-Key` on the creating POSTs (route handlers with
`opt["idempotent"]`), scoped to the API key.

The first request with a key claims it (Postgres) and runs; its outcome is stored before the client sees
it: the status and JSON body, or for a stream the run it streams. A repeat with the same method, path and
body gets that outcome again with `Idempotent-Replayed: true` (a stream: the original run's events from its
start, followed live); the same key with another request is 422 `IDEMPOTENCY_KEY_REUSED`; a repeat while the
first is still being accepted is 409 `IDEMPOTENCY_IN_PROGRESS`. Error outcomes (4xx/5xx) are not remembered."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from app.domain.idempotency import ATTACH_RUN_STATE, IDEMPOTENT_OPT
from app.domain.idempotency.store import Claimed, IdempotencyStore, InProgress, Replay, Reused, Running
from app.domain.keys.auth import Principal
from app.domain.runs.controllers import sse
from app.domain.runs.services import RunService, query_result
from app.lib.problems import PROBLEM_JSON, ApiError, Problem, is_database_unavailable, is_valkey_unavailable
from app.lib.request_limits import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

HEADER = "idempotency-key"
KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")
# Response headers kept with a stored outcome (the rest are per-response: request id, rate limits, ...).
KEPT_HEADERS = ("content-type", "location", "etag", "x-session-id", "x-run-id")
# Bodies larger than Litestar accepts are refused by it (413); they are never remembered.
STREAM_TYPE = "text/event-stream"
# Tries to store an outcome through a Postgres blip (about 5 s in all).
REMEMBER_ATTEMPTS = 8


def _problem(
    scope: Scope, status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> ASGIResponse:
    body = Problem.of(status, code, title, detail, scope["path"])
    return ASGIResponse(body=msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _database_unavailable(scope: Scope) -> ASGIResponse:
    return _problem(
        scope,
        503,
        "DATABASE_UNAVAILABLE",
        "Database unavailable",
        "PostgreSQL cannot be reached; try again shortly.",
        {"Retry-After": "2"},
    )


async def _read_body(receive: Receive) -> tuple[list[ReceiveMessage], bytes, bool]:
    """The request's body messages (to replay to the app), the body, and whether it fit `MAX_BODY_BYTES`."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return messages, b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return messages, b"".join(chunks), True


class IdempotencyMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, store: IdempotencyStore, run_service: RunService) -> None:
        self.store = store
        # A replay of a run's stream rejoins the run; a repeat of `/query/single` waits for its result.
        self.run_service = run_service

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        handler = scope.get("route_handler")
        user = scope.get("user")
        raw_key = next((v for k, v in scope["headers"] if k == b"idempotency-key"), None)
        if raw_key is None or handler is None or not handler.opt.get(IDEMPOTENT_OPT) or not isinstance(user, Principal):
            await next_app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not KEY_PATTERN.match(key):
            await _problem(
                scope,
                400,
                "VALIDATION_ERROR",
                "Invalid Idempotency-Key",
                "Idempotency-Key must be 1-255 printable ASCII characters.",
            )(scope, receive, send)
            return
        messages, body, fits = await _read_body(receive)
        pending = list(messages)

        async def replay_receive() -> ReceiveMessage:
            if pending:
                return pending.pop(0)
            return await receive()

        if not fits:
            await next_app(scope, replay_receive, send)
            return
        fingerprint = hashlib.sha256(
            b"\0".join(
                (str(scope.get("method", "")).encode(), scope["path"].encode(), scope.get("query_string", b""), body)
            )
        ).hexdigest()
        store = self.store
        try:
            begun = await store.begin(user.key_id, key, fingerprint)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            await _database_unavailable(scope)(scope, receive, send)
            return
        if isinstance(begun, Reused):
            await _problem(
                scope,
                422,
                "IDEMPOTENCY_KEY_REUSED",
                "Idempotency key reused",
                "This Idempotency-Key was used for a different request.",
            )(scope, receive, send)
        elif isinstance(begun, InProgress):
            await _problem(
                scope,
                409,
                "IDEMPOTENCY_IN_PROGRESS",
                "Idempotent request in progress",
                "A request with this Idempotency-Key is still being accepted; retry shortly.",
                {"Retry-After": "1"},
            )(scope, receive, send)
        elif isinstance(begun, Replay | Running):
            try:
                if isinstance(begun, Replay):
                    await self._replay(begun, scope, replay_receive, send, user)
                else:
                    await self._await_run(begun, scope, replay_receive, send, user)
            except ApiError as exc:  # e.g. the replayed run's stream needs Valkey
                await _problem(scope, exc.status, exc.code, exc.title, exc.detail or "", exc.headers)(
                    scope, receive, send
                )
            except Exception as exc:
                if is_valkey_unavailable(exc):
                    await _problem(
                        scope,
                        503,
                        "VALKEY_UNAVAILABLE",
                        "Valkey unavailable",
                        "Valkey cannot be reached; try again shortly.",
                        {"Retry-After": "2"},
                    )(scope, receive, send)
                elif is_database_unavailable(exc):
                    await _database_unavailable(scope)(scope, receive, send)
                else:
                    raise
        else:
            await self._first(begun, store, scope, replay_receive, send, next_app)

    async def _first(
        self, claim: Claimed, store: IdempotencyStore, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp
    ) -> None:
        state: dict[str, Any] = {"start": None, "body": [], "done": False}

        async def attach_run(run_id: UUID) -> None:
            await store.attach_run(claim.record_id, run_id)

        # A handler that answers only when its run ends (`/query/single`) names the run as soon as it exists.
        scope.setdefault("state", {})[ATTACH_RUN_STATE] = attach_run

        async def capture(message: Message) -> None:
            if state["done"]:
                await send(message)
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                if status >= 400:
                    state["done"] = True
                    await _best_effort(store.abandon(claim.record_id), "forget the claim")
                    await send(message)
                    return
                if headers.get("content-type", "").startswith(STREAM_TYPE):
                    # A stream is remembered by the run it streams, before its first byte goes out.
                    state["done"] = True
                    await _remember(store, claim.record_id, status, None, _kept(headers))
                    await send(message)
                    return
                state["start"] = (message, status, headers)
                return
            if message["type"] == "http.response.body":
                state["body"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, status, headers = state["start"]
                state["done"] = True
                payload = b"".join(state["body"])
                await _remember(store, claim.record_id, status, payload, _kept(headers))
                await send(start)
                await send({"type": "http.response.body", "body": payload, "more_body": False})
                return
            await send(message)

        try:
            await next_app(scope, receive, capture)
        except BaseException:
            if not state["done"]:
                await _best_effort(store.abandon(claim.record_id), "forget the claim")
            raise
        if not state["done"]:
            await _best_effort(store.abandon(claim.record_id), "forget the claim")

    async def _await_run(self, running: Running, scope: Scope, receive: Receive, send: Send, user: Principal) -> None:
        """A repeat of `/query/single` while its run goes on: the same answer, once the run has ended."""
        run_service = self.run_service
        run = await run_service.get(user.key_id, running.run_id)
        while not run.ended:
            run = await run_service.wait(user.key_id, running.run_id, 30)
        await ASGIResponse(
            body=msgspec.json.encode(query_result(run)),
            status_code=200,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true", "X-Run-ID": str(run.id), "X-Session-ID": str(run.session_id)},
        )(scope, receive, send)

    async def _replay(self, replay: Replay, scope: Scope, receive: Receive, send: Send, user: Principal) -> None:
        headers = {**replay.headers, "Idempotent-Replayed": "true"}
        if replay.body is None and headers.get("content-type", "").startswith(STREAM_TYPE):
            run_id = UUID(headers["x-run-id"])
            run_service = self.run_service
            run, stream = await run_service.run_events(user.key_id, run_id)
            response = sse(stream, run.session_id, run.id)
            response.headers["Idempotent-Replayed"] = "true"
            await response.to_asgi_response(app=None, request=Request(scope))(scope, receive, send)
            return
        media_type = headers.pop("content-type", "application/json")
        await ASGIResponse(
            body=replay.body or b"", status_code=replay.status_code, media_type=media_type, headers=headers
        )(scope, receive, send)


async def _best_effort(write: Any, what: str) -> None:
    """A claim that cannot be forgotten (Postgres just went away) is taken over after `STALE_CLAIM`."""
    try:
        await write
    except Exception:
        logger.warning("idempotency: could not %s", what, exc_info=True)


async def _remember(
    store: IdempotencyStore, record_id: int, status: int, body: bytes | None, headers: dict[str, str]
) -> None:
    """The outcome is stored before the client sees it, through a short Postgres outage; if it still cannot be,
    the client gets its answer anyway (a repeat then waits out the claim, see `STALE_CLAIM`)."""
    delay = 0.1
    for attempt in range(REMEMBER_ATTEMPTS):
        try:
            await store.complete(record_id, status, body, headers)
            return
        except Exception:
            if attempt == REMEMBER_ATTEMPTS - 1:
                logger.error("idempotency: could not store the outcome of claim %s", record_id, exc_info=True)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _kept(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in KEPT_HEADERS}
