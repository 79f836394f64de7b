from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream
from msgspec import Meta, Struct

from app.domain.idempotency import ATTACH_RUN_STATE, IDEMPOTENT_OPT, IdempotencyKey
from app.domain.keys.principal import AuthedRequest
from app.domain.keys.rate_limit import RATE_LIMIT_GROUP_OPT, RUNS_GROUP
from app.domain.runs.schemas import (
    AnswerDelivered,
    AnswerRequest,
    InterruptAccepted,
    QueryRequest,
    QueryResult,
    Run,
    RunPage,
    RunRequest,
    RunStatus,
)
from app.domain.runs.services import STREAM_START, RunService, parse_after
from app.lib.di import AppDependency
from app.lib.logging import bind_session_from_path
from app.lib.problems import problem_responses
from app.lib.sse import encode_batches

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


MAX_OFFSET = 2**53
MAX_WAIT_SECONDS = 300

LastEventId = Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)]
After = Annotated[str | None, QueryParameter(required=False, description="Exclusive; like Last-Event-ID")]


def sse(stream: Any, session_id: UUID, run_id: UUID) -> Stream:
    headers = {**SSE_HEADERS, "X-Session-ID": str(session_id), "X-Run-ID": str(run_id)}
    return Stream(encode_batches(stream), media_type="text/event-stream", headers=headers)


def streamed(run_service: RunService, run: Run) -> Stream:
    """A just-submitted run's events from its start (pings while it waits in the queue)."""
    return sse(run_service.follower.follow(run.session_id, run.id, STREAM_START), run.session_id, run.id)


def accepted(run: Run, status_code: int = 202) -> Response[Run]:
    return Response(run, status_code=status_code, headers={"Location": f"/api/v1/runs/{run.id}"})


class RunController(Controller):
    """Starting runs (streamed, single-shot or in the background) and reaching them by session."""

    path = "/api/v1"
    tags = ["Runs"]
    before_request = staticmethod(bind_session_from_path)

    @post(
        "/query",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP, IDEMPOTENT_OPT: True},
        summary="Run the agent, streaming events (SSE)",
        status_code=200,
        responses={**SSE_RESPONSE, **problem_responses(404, 409, 422)},
    )
    async def query(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        data: JSONBody[QueryRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Stream:
        submitted = await run_service.create(request.user.key_id, data.session_id, data.options(), if_busy=data.if_busy)
        return streamed(run_service, submitted.run)

    @post(
        "/query/single",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP, IDEMPOTENT_OPT: True},
        summary="Run the agent and wait for its result",
        status_code=200,
        responses=problem_responses(404, 409, 422),
    )
    async def query_single(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        data: JSONBody[QueryRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> QueryResult:
        attach_run = request.state.get(ATTACH_RUN_STATE)
        return await run_service.single(
            request.user.key_id, data.session_id, data.options(), data.if_busy, on_started=attach_run
        )

    @post(
        "/sessions/{session_id:uuid}/resume",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP, IDEMPOTENT_OPT: True},
        summary="Run the agent on an existing session (SSE)",
        status_code=200,
        responses={**SSE_RESPONSE, **problem_responses(404, 409, 422)},
    )
    async def resume(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        session_id: FromPath[UUID],
        data: JSONBody[RunRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Stream:
        submitted = await run_service.create(request.user.key_id, session_id, data.options(), if_busy=data.if_busy)
        return streamed(run_service, submitted.run)

    @post(
        "/sessions/{session_id:uuid}/runs",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP, IDEMPOTENT_OPT: True},
        summary="Start a run in the background",
        description="202 with the Run and `Location: /api/v1/runs/{run_id}`; the run goes on without the client.",
        status_code=202,
        responses=problem_responses(404, 409, 422),
    )
    async def create_session_run(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        session_id: FromPath[UUID],
        data: JSONBody[RunRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Run]:
        submitted = await run_service.create(request.user.key_id, session_id, data.options(), if_busy=data.if_busy)
        return accepted(submitted.run)

    @post(
        "/runs",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP, IDEMPOTENT_OPT: True},
        summary="Start a run in the background (a new session without session_id)",
        status_code=202,
        responses=problem_responses(404, 409, 422),
    )
    async def create_run(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        data: JSONBody[QueryRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Run]:
        submitted = await run_service.create(request.user.key_id, data.session_id, data.options(), if_busy=data.if_busy)
        return accepted(submitted.run)

    @get(
        "/sessions/{session_id:uuid}/runs",
        summary="List a session's runs, newest first",
        responses=problem_responses(404),
    )
    async def list_session_runs(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        session_id: FromPath[UUID],
        status: Annotated[
            list[RunStatus] | None,
            QueryParameter(max_items=6, description="Repeatable: runs in any of these states."),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> RunPage:
        return await run_service.list_for_session(
            request.user.key_id, session_id, statuses=status or [], limit=limit, offset=offset
        )

    @get(
        "/sessions/{session_id:uuid}/events",
        summary="Follow or replay the current/last run's events (SSE)",
        responses={
            **SSE_RESPONSE,
            204: ResponseSpec(None, description="The session never ran."),
            **problem_responses(404),
        },
    )
    async def session_events(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        session_id: FromPath[UUID],
        last_event_id: LastEventId = None,
        after: After = None,
    ) -> Stream | Response[None]:
        start = parse_after(last_event_id if last_event_id else after)
        opened = await run_service.session_events(request.user.key_id, session_id, start)
        if opened is None:
            return Response(None, status_code=204)
        run, stream = opened
        return sse(stream, session_id, run.id)

    @post(
        "/sessions/{session_id:uuid}/interrupt",
        summary="Interrupt the active run, wherever it runs",
        status_code=202,
        responses=problem_responses(404, 409),
    )
    async def interrupt(
        self, request: AuthedRequest, run_service: AppDependency[RunService], session_id: FromPath[UUID]
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
        run_service: AppDependency[RunService],
        session_id: FromPath[UUID],
        data: JSONBody[AnswerRequest],
    ) -> AnswerDelivered:
        await run_service.answer(request.user.key_id, session_id, data.answer, data.question_id)
        return AnswerDelivered(status="delivered")


class RunResourceController(Controller):
    """A run by its id, from any instance, during and after its life."""

    path = "/api/v1/runs"
    tags = ["Runs"]

    @get("/{run_id:uuid}", summary="Get a run", responses=problem_responses(404))
    async def get_run(
        self, request: AuthedRequest, run_service: AppDependency[RunService], run_id: FromPath[UUID]
    ) -> Run:
        return await run_service.get(request.user.key_id, run_id)

    @get(
        "/{run_id:uuid}/wait",
        summary="Wait until the run has ended (or the timeout passed)",
        responses=problem_responses(404),
    )
    async def wait_run(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        run_id: FromPath[UUID],
        timeout: Annotated[
            float, QueryParameter(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait at most (0-300).")
        ] = 30,
    ) -> Run:
        return await run_service.wait(request.user.key_id, run_id, timeout)

    @get(
        "/{run_id:uuid}/events",
        summary="Follow or replay this run's events (SSE)",
        responses={**SSE_RESPONSE, **problem_responses(404)},
    )
    async def run_events(
        self,
        request: AuthedRequest,
        run_service: AppDependency[RunService],
        run_id: FromPath[UUID],
        last_event_id: LastEventId = None,
        after: After = None,
    ) -> Stream:
        start = parse_after(last_event_id if last_event_id else after)
        run, stream = await run_service.run_events(request.user.key_id, run_id, start)
        return sse(stream, run.session_id, run.id)

    @post(
        "/{run_id:uuid}/cancel",
        summary="Cancel a run",
        description=(
            "running → interrupted (202; its stream ends with `done {reason: interrupted}`); queued → "
            "`cancelled` at once, it never starts (200); already ended → 200, unchanged."
        ),
        status_code=200,
        responses={202: ResponseSpec(Run, description="Interrupting the running run."), **problem_responses(404)},
    )
    async def cancel_run(
        self, request: AuthedRequest, run_service: AppDependency[RunService], run_id: FromPath[UUID]
    ) -> Response[Run]:
        run, interrupting = await run_service.cancel(request.user.key_id, run_id)
        return Response(run, status_code=202 if interrupting else 200)
