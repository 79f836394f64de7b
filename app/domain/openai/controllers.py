"""`/v1`: the OpenAI-compatible API, for the official OpenAI clients (`base_url=<host>/v1`)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from app.domain.keys.principal import AuthedRequest
from app.domain.keys.rate_limit import RATE_LIMIT_GROUP_OPT, RUNS_GROUP
from app.domain.openai.dependencies import provide_openai_service
from app.domain.openai.errors import ERROR_SHAPE_OPT, OPENAI_SHAPE, openai_error_responses, openai_exception_handlers
from app.domain.openai.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    InputItemList,
    Model,
    ModelList,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseEvent,
    ResponseObject,
)
from app.domain.openai.services import ModelCatalog, OpenAIService
from app.lib.di import AppDependency

TAG = "OpenAI-compatible"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _headers(session_id: object, run_id: object) -> dict[str, str]:
    return {"X-Session-ID": str(session_id), "X-Run-ID": str(run_id)}


class ModelsController(Controller):
    path = "/models"

    @get("/", summary="List models", responses=openai_error_responses())
    async def list_models(self, model_catalog: AppDependency[ModelCatalog]) -> ModelList:
        return model_catalog.list()

    @get("/{model_id:str}", summary="Retrieve a model", responses=openai_error_responses(404))
    async def get_model(self, model_catalog: AppDependency[ModelCatalog], model_id: FromPath[str]) -> Model:
        return model_catalog.require(model_id, param=None)


CHAT_STREAM = ResponseSpec(
    data_container=ChatCompletionChunk,
    media_type="text/event-stream",
    description=(
        "With `stream: true`: `data: <chat.completion.chunk>` items (the first has `delta.role`, then "
        "`delta.content` pieces, the last `finish_reason: stop`; with `stream_options.include_usage` one more "
        "chunk with empty `choices` and `usage`), then `data: [DONE]`. A failed run sends "
        '`data: {"error": {...}}` before `[DONE]`. `X-Session-ID` names the session.'
    ),
)


class ChatCompletionsController(Controller):
    path = "/chat/completions"

    @post(
        "/",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP},
        summary="Create a chat completion (a run in a new or continued session)",
        description=(
            "Each call is one run. Without `metadata.session_id` a new session is created: system/developer "
            "messages become its system prompt, earlier turns the context, the last user message the prompt. "
            "With `metadata.session_id` that session goes on with the last user message only (its own history "
            "is the context). Unsupported parameters (client-side `tools`, `n` > 1, `logprobs`, `audio`, sampling "
            "parameters, ...) answer 400 naming the parameter. The run is a normal run: visible in "
            "`/api/v1/sessions/{id}/messages`, rejoinable, interruptible, rate limited as a run."
        ),
        status_code=200,
        responses={
            200: ResponseSpec(ChatCompletion, description="chat.completion (without `stream`)"),
            **openai_error_responses(404, 409, 422, 500),
        },
    )
    async def create(
        self,
        request: AuthedRequest,
        openai_service: NamedDependency[OpenAIService],
        data: JSONBody[ChatCompletionRequest],
    ) -> Response[ChatCompletion] | Stream:
        run = await openai_service.start_chat(request.user.key_id, data)
        headers = _headers(run.session_id, run.id)
        if data.stream:
            return Stream(
                openai_service.chat_stream(request.user.key_id, data, run),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        completion = await openai_service.chat(request.user.key_id, data, run)
        return Response(completion, headers=headers)


RESPONSES_STREAM = ResponseSpec(
    data_container=ResponseEvent,
    media_type="text/event-stream",
    description=(
        "With `stream: true`: `event: <type>` / `data: <event>` items, `sequence_number` from 0 up by one: "
        "response.created, response.in_progress, response.output_item.added, response.content_part.added, "
        "response.output_text.delta..., response.output_text.done, response.content_part.done, "
        "response.output_item.done, then response.completed | response.failed | response.incomplete (an "
        "interrupted or cancelled run; its status is `cancelled`)."
    ),
)


class ResponsesController(Controller):
    path = "/responses"

    @post(
        "/",
        opt={RATE_LIMIT_GROUP_OPT: RUNS_GROUP},
        summary="Create a response (a run)",
        description=(
            "`input` is a string or message items (system/developer items and `instructions` become the system "
            "prompt, earlier items the context, the last user item the prompt). `previous_response_id` continues "
            "that response's session. `background: true` returns at once (`status: in_progress`); poll "
            "`GET /v1/responses/{id}` or stream it with `?stream=true&starting_after=<n>` from any instance. "
            "`id` is `resp_<run id hex>`; `X-Session-ID` names the session."
        ),
        status_code=200,
        responses={
            200: ResponseSpec(ResponseObject, description="response (without `stream`)"),
            **openai_error_responses(404, 409, 422),
        },
    )
    async def create(
        self,
        request: AuthedRequest,
        openai_service: NamedDependency[OpenAIService],
        data: JSONBody[ResponseCreateRequest],
    ) -> Response[ResponseObject] | Stream:
        owner = request.user.key_id
        run, meta = await openai_service.start_response(owner, data)
        headers = _headers(run.session_id, run.id)
        if data.stream:
            return Stream(
                openai_service.response_events(owner, run, meta),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        if data.background:
            return Response(openai_service.builder(run, meta).snapshot(), headers=headers)
        return Response(await openai_service.complete_response(owner, run, meta), headers=headers)

    @get(
        "/{response_id:str}",
        summary="Retrieve a response (or resume its event stream)",
        description=(
            "With `stream=true` the response's event stream from its start, or after `starting_after` (a "
            "`sequence_number`), followed live until the end, on any instance."
        ),
        responses={
            200: ResponseSpec(ResponseObject, description="response (without `stream`)"),
            **openai_error_responses(404),
        },
    )
    async def retrieve(
        self,
        request: AuthedRequest,
        openai_service: NamedDependency[OpenAIService],
        response_id: FromPath[str],
        stream: Annotated[bool, QueryParameter(required=False)] = False,
        starting_after: Annotated[int | None, QueryParameter(required=False, ge=-1)] = None,
    ) -> Response[ResponseObject] | Stream:
        owner = request.user.key_id
        run = await openai_service.find_run(owner, response_id)
        headers = _headers(run.session_id, run.id)
        if stream:
            meta = await openai_service.meta_of(owner, run)
            after = -1 if starting_after is None else starting_after
            return Stream(
                openai_service.response_events(owner, run, meta, after),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        return Response(await openai_service.retrieve(owner, run), headers=headers)

    @post(
        "/{response_id:str}/cancel",
        summary="Cancel a response (interrupts its run, wherever it runs)",
        status_code=200,
        responses=openai_error_responses(404),
    )
    async def cancel(
        self, request: AuthedRequest, openai_service: NamedDependency[OpenAIService], response_id: FromPath[str]
    ) -> ResponseObject:
        run = await openai_service.find_run(request.user.key_id, response_id)
        return await openai_service.cancel(request.user.key_id, run)

    @delete(
        "/{response_id:str}",
        summary="Delete a response (not supported yet: 400)",
        status_code=200,
        responses=openai_error_responses(404),
    )
    async def delete_response(
        self, request: AuthedRequest, openai_service: NamedDependency[OpenAIService], response_id: FromPath[str]
    ) -> ResponseDeleted:
        run = await openai_service.find_run(request.user.key_id, response_id)
        await openai_service.delete(request.user.key_id, run)
        return ResponseDeleted(id=response_id, object="response", deleted=True)

    @get(
        "/{response_id:str}/input_items",
        summary="List a response's input items",
        responses=openai_error_responses(404),
    )
    async def input_items(
        self, request: AuthedRequest, openai_service: NamedDependency[OpenAIService], response_id: FromPath[str]
    ) -> InputItemList:
        run = await openai_service.find_run(request.user.key_id, response_id)
        return openai_service.input_items(run)


openai_router = Router(
    path="/v1",
    route_handlers=[ModelsController, ChatCompletionsController, ResponsesController],
    tags=[TAG],
    opt={ERROR_SHAPE_OPT: OPENAI_SHAPE},
    exception_handlers=openai_exception_handlers(),
    dependencies={"openai_service": Provide(provide_openai_service, sync_to_thread=False)},
)


_STREAMS = {
    ("/v1/chat/completions", "post"): CHAT_STREAM,
    ("/v1/responses", "post"): RESPONSES_STREAM,
    ("/v1/responses/{response_id}", "get"): RESPONSES_STREAM,
}


def document_streams(openapi: Any) -> None:
    """Each of these answers 200 as JSON, or with `stream: true` as `text/event-stream`: both in the document
    (Litestar gives one media type per status)."""
    from litestar.openapi.spec import OpenAPIMediaType, Schema
    from litestar.openapi.spec.enums import OpenAPIType

    for (path, method), spec in _STREAMS.items():
        operation = getattr((openapi.paths or {}).get(path), method, None)
        ok = (operation.responses or {}).get("200") if operation is not None else None
        if ok is None or not hasattr(ok, "content"):
            continue
        ok.content = {
            **(ok.content or {}),
            "text/event-stream": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description=spec.description)),
        }
        ok.description = f"{ok.description} {spec.description}"
