"""Run use cases behind the HTTP API: start (query/resume/single), follow, interrupt, answer."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import msgspec

from app.agents.base import AgentRequest, AgentRequestError
from app.domain.runs.manager import RunManager, valkey_unavailable
from app.domain.runs.schemas import QueryRequest, QueryResult, RunError, RunOptions
from app.domain.runs.streams import EventFollower
from app.domain.sessions.keys import interrupt_key
from app.domain.sessions.schemas import Session, SessionCreate, Usage
from app.domain.sessions.services import SessionService
from app.lib.problems import ApiError
from app.lib.sse import SSEFrame
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import parse_entry_id
from app.lib.valkey.keys import scoped_key

STREAM_START = "0-0"


def not_running(session_id: UUID) -> ApiError:
    return ApiError(409, "NOT_RUNNING", f"Session {session_id} has no active run.", title="Not running")


# Valkey stream ids are two unsigned 64-bit numbers, Postgres keeps them as signed bigints: larger parts are
# not ids at all (and would fail deep inside the stream, after the 200 went out).
MAX_EVENT_ID_PART = 2**63 - 1


def parse_after(value: str | None) -> str:
    if value is None or value == "":
        return STREAM_START
    try:
        ms, seq = parse_entry_id(value.strip())
    except ValueError:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            "Last-Event-ID / after must be a stream id like 1700000000000-0.",
            title="Invalid event id",
        ) from None
    if ms < 0 or seq < 0:
        raise ApiError(400, "VALIDATION_ERROR", "Event ids are non-negative.", title="Invalid event id")
    if ms > MAX_EVENT_ID_PART or seq > MAX_EVENT_ID_PART:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"Event id parts must be at most {MAX_EVENT_ID_PART}.",
            title="Invalid event id",
        )
    return f"{ms}-{seq}"


class RunService:
    def __init__(self, sessions: SessionService, manager: RunManager, follower: EventFollower) -> None:
        self.sessions = sessions
        self.manager = manager
        self.follower = follower

    async def _require_valkey(self) -> None:
        try:
            await self.manager.infra.events.ping()
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc

    def _validate(self, options: RunOptions, session: Session | None) -> None:
        """The backend's own checks (models, tools, ...), before any session, lease or run: 422."""
        request = AgentRequest(
            session_id=str(session.id) if session is not None else "",
            run_id="",
            prompt=options.prompt,
            model=options.model or (session.model if session is not None else None),
            permission_mode=options.permission_mode or (session.permission_mode if session is not None else None),
            allowed_tools=list(options.allowed_tools or []),
            disallowed_tools=list(options.disallowed_tools or []),
            max_turns=options.max_turns,
            system_prompt=options.system_prompt,
            output_format=options.output_format,
            include_partial_messages=options.include_partial_messages,
        )
        try:
            self.manager.backend.validate(request)
        except AgentRequestError as exc:
            raise ApiError(422, "VALIDATION_ERROR", str(exc), title="Invalid run options") from exc

    async def start(self, owner_key_id: UUID, session_id: UUID | None, options: RunOptions) -> tuple[Session, UUID]:
        if session_id is None:
            self._validate(options, None)
        await self._require_valkey()
        if session_id is None:
            session = await self.sessions.create_session(
                owner_key_id,
                SessionCreate(title=options.prompt[:80], model=options.model, permission_mode=options.permission_mode),
            )
        else:
            session = await self.sessions.get_session(session_id, owner_key_id)
            self._validate(options, session)
        run_id, session = await self.manager.start_run(owner_key_id, session, msgspec.structs.asdict(options))
        return session, run_id

    def stream(
        self, session_id: UUID, after: str = STREAM_START, run_id: UUID | None = None
    ) -> AsyncIterator[list[SSEFrame] | None]:
        return self.follower.follow(session_id, after, run_id=run_id)

    async def single(self, owner_key_id: UUID, body: QueryRequest) -> QueryResult:
        session, run_id = await self.start(owner_key_id, body.session_id, body)
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        reason = "error"
        async for batch in self.stream(session.id, STREAM_START):
            for frame in batch or ():
                if frame.event not in ("result", "error", "done"):
                    continue
                data = msgspec.json.decode(frame.data)
                if frame.event == "result":
                    result = data
                elif frame.event == "error":
                    error = data
                else:
                    reason = data.get("reason", "error")
        if result is not None and error is None and reason == "completed":
            return msgspec.convert({**result, "error": None}, QueryResult)
        if error is None:
            error = {
                "code": "AGENT_ERROR" if reason == "error" else "INTERRUPTED",
                "message": f"The run ended: {reason}.",
            }
        base = result or {}
        return QueryResult(
            session_id=session.id,
            run_id=run_id,
            is_error=True,
            num_turns=int(base.get("num_turns", 0)),
            duration_ms=int(base.get("duration_ms", 0)),
            total_cost_usd=float(base.get("total_cost_usd", 0.0)),
            usage=msgspec.convert(base.get("usage") or {}, Usage),
            result=base.get("result"),
            structured_output=base.get("structured_output"),
            stop_reason=base.get("stop_reason"),
            error=RunError(code=str(error.get("code", "AGENT_ERROR")), message=str(error.get("message", ""))),
        )

    async def events(
        self, owner_key_id: UUID, session_id: UUID, after: str
    ) -> AsyncIterator[list[SSEFrame] | None] | None:
        """None when the session never ran (the caller answers 204)."""
        session = await self.sessions.get_session(session_id, owner_key_id)
        if session.last_run_at is None:
            return None
        await self._require_valkey()
        row = await self.sessions.load_owned(session_id, owner_key_id)
        return self.stream(session_id, after, run_id=row.last_run_id)

    async def interrupt(self, owner_key_id: UUID, session_id: UUID) -> UUID:
        await self.sessions.get_session(session_id, owner_key_id)
        lease = await self.manager.current_lease(session_id)
        if lease is None:
            raise not_running(session_id)
        if not self.manager.interrupt_local(lease.run_id):
            infra = self.manager.infra
            try:
                await infra.control.publish(
                    {"type": "interrupt", "session_id": str(session_id), "run_id": str(lease.run_id)},
                    marker=(interrupt_key(session_id), str(lease.run_id), self.manager.settings.runs.interrupt_ttl),
                )
            except VALKEY_ERRORS as exc:
                raise valkey_unavailable() from exc
        return lease.run_id

    async def answer(self, owner_key_id: UUID, session_id: UUID, answer: str, question_id: str | None) -> None:
        await self.sessions.get_session(session_id, owner_key_id)
        lease = await self.manager.current_lease(session_id)
        if lease is None:
            raise not_running(session_id)
        outcome = await self.manager.answer_local(lease.run_id, answer, question_id)
        if outcome is None:
            infra = self.manager.infra
            reply_key = scoped_key(session_id, f"reply:{secrets.token_hex(8)}")
            try:
                await infra.control.publish(
                    {
                        "type": "answer",
                        "session_id": str(session_id),
                        "run_id": str(lease.run_id),
                        "answer": answer,
                        "question_id": question_id,
                        "reply_key": reply_key,
                    }
                )
                reply = await infra.control.wait_reply(reply_key, self.manager.settings.runs.answer_timeout)
            except VALKEY_ERRORS as exc:
                raise valkey_unavailable() from exc
            if reply is None:
                raise not_running(session_id)
            outcome = reply.get("outcome")
        if outcome != "delivered":
            raise ApiError(
                409, "NO_PENDING_QUESTION", "The run is not waiting for an answer.", title="No pending question"
            )
