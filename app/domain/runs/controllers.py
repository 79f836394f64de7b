from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream
from msgspec import Meta, Struct

from app.domain.keys.auth import Principal
from app.domain.keys.rate_limit import RATE_LIMIT_GROUP_OPT, RUNS_GROUP
from app.domain.runs.dependencies import provide_run_service
from app.domain.runs.schemas import (
    AnswerDelivered,
    AnswerRequest,
    InterruptAccepted,
    QueryRequest,
    QueryResult,
    ResumeRequest,
)
from app.domain.runs.services import STREAM_START, RunService, parse_after
from app.domain.sessions.dependencies import provide_session_service
from app.lib.logging import bind_session_from_path
from app.lib.problems import problem_responses
from app.lib.sse import encode_batches

AuthedRequest = Request[Principal, Any, State]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DESCRIPTION = (
    "text/event-stream. Every event has `id` (Valkey stream id), `event` and JSON `data`: "
    "init, message, partial (with include_partial_messages), question, result, error, then done "
    "{reason: completed|interrupted|error}, always last and exactly once. `: ping` after 15 s of silence.\n\n"
    "`question` `{question_id, question, options, kind, ...}` waits for `POST /sessions/{id}/answer`. With the "
    "claude backend `kind` tells two cases apart: `ask_user_question` (the agent called AskUserQuestion; also "
    "`header`, `multi_select`, `option_details` [{label, description}], `tool_use_id`; the answer text becomes "
    "the tool's answer) and `permission` (a tool needs approval, e.g. Bash in `default` mode; `options` is "
    '["allow", "deny"], also `tool_name`, `tool_input`, `tool_use_id`, `description`; answer `allow` to run '
    "it, `deny` to refuse, any other text refuses it and reaches the agent as the reason).\n\n"
    "With the claude backend `message` also carries `role: system` notices (`subtype`, `data`, empty "
    "`content`) and `result` the SDK's extra fields (`subtype`, `model_usage`, `terminal_reason`, ...)."
)


class ServerSentEvent(Struct):
    """One event of the stream, as OpenAPI describes `text/event-stream` items (comments are not events)."""

    id: Annotated[str, Meta(pattern=r"^[0-9]+-[0-9]+$", description="The Valkey stream id <ms>-<seq>.")]
    event: Literal["init", "message", "partial", "question", "result", "error", "done"]
    data: Annotated[str, Meta(description="The event's payload as JSON.")]


SSE_RESPONSE = {
    200: ResponseSpec(data_container=ServerSentEvent, media_type="text/event-stream", description=SSE_DESCRIPTION)
}


def sse(stream: Any, session_id: UUID, run_id: UUID | None = None) -> Stream:
    headers = {**SSE_HEADERS, "X-Session-ID": str(session_id)}
    if run_id is not None:
        headers["X-Run-ID"] = str(run_id)
    return Stream(encode_batches(stream), media_type="text/event-stream", headers=headers)


class RunController(Controller):
    path = "/api/v1"
    tags = ["Runs"]
    before_request = staticmethod(bind_session_from_path)
    dependencies = {
        "session_service": Provide(provide_session_service),
        "run_service": Provide(provide_run_service),
    }

    @post(
        "/query",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP},
        summary="Run the agent, streaming events (SSE)",
        status_code=200,
        responses={**SSE_RESPONSE, **problem_responses(404, 409, 422)},
    )
    async def query(
        self, request: AuthedRequest, run_service: NamedDependency[RunService], data: JSONBody[QueryRequest]
    ) -> Stream:
        session, run_id = await run_service.start(request.user.key_id, data.session_id, data)
        return sse(run_service.stream(session.id, STREAM_START), session.id, run_id)

    @post(
        "/query/single",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP},
        summary="Run the agent and wait for its result",
        status_code=200,
        responses=problem_responses(404, 409, 422),
    )
    async def query_single(
        self, request: AuthedRequest, run_service: NamedDependency[RunService], data: JSONBody[QueryRequest]
    ) -> QueryResult:
        return await run_service.single(request.user.key_id, data)

    @post(
        "/sessions/{session_id:uuid}/resume",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP},
        summary="Run the agent on an existing session (SSE)",
        status_code=200,
        responses={**SSE_RESPONSE, **problem_responses(404, 409, 422)},
    )
    async def resume(
        self,
        request: AuthedRequest,
        run_service: NamedDependency[RunService],
        session_id: FromPath[UUID],
        data: JSONBody[ResumeRequest],
    ) -> Stream:
        session, run_id = await run_service.start(request.user.key_id, session_id, data)
        return sse(run_service.stream(session.id, STREAM_START), session.id, run_id)

    @get(
        "/sessions/{session_id:uuid}/events",
        summary="Follow or replay the current/last run's events (SSE)",
        responses={
            **SSE_RESPONSE,
            204: ResponseSpec(None, description="The session never ran."),
            **problem_responses(404),
        },
    )
    async def events(
        self,
        request: AuthedRequest,
        run_service: NamedDependency[RunService],
        session_id: FromPath[UUID],
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)] = None,
        after: Annotated[
            str | None, QueryParameter(required=False, description="Exclusive; like Last-Event-ID")
        ] = None,
    ) -> Stream | Response[None]:
        start = parse_after(last_event_id if last_event_id else after)
        stream = await run_service.events(request.user.key_id, session_id, start)
        if stream is None:
            return Response(None, status_code=204)
        return sse(stream, session_id)

    @post(
        "/sessions/{session_id:uuid}/interrupt",
        summary="Interrupt the active run, wherever it runs",
        status_code=202,
        responses=problem_responses(404, 409),
    )
    async def interrupt(
        self, request: AuthedRequest, run_service: NamedDependency[RunService], session_id: FromPath[UUID]
    ) -> InterruptAccepted:
        run_id = await run_service.interrupt(request.user.key_id, session_id)
        return InterruptAccepted(status="interrupting", run_id=run_id)

    @post(
        "/sessions/{session_id:uuid}/answer",
        summary="Answer the running agent's question",
        description=(
            "Delivers `answer` to the pending `question` (`question_id`, or the oldest pending one). For a "
            "`permission` question (claude backend), `allow` approves the tool, `deny` refuses it, and any "
            "other text refuses it with that text as the reason given to the agent. For an `ask_user_question` "
            "question the text is the user's answer."
        ),
        status_code=200,
        responses=problem_responses(404, 409, 422),
    )
    async def answer(
        self,
        request: AuthedRequest,
        run_service: NamedDependency[RunService],
        session_id: FromPath[UUID],
        data: JSONBody[AnswerRequest],
    ) -> AnswerDelivered:
        await run_service.answer(request.user.key_id, session_id, data.answer, data.question_id)
        return AnswerDelivered(status="delivered")
