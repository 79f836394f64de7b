"""Wire shapes of the OpenAI-compatible API (msgspec), as the official clients send and parse them.

Request bodies name every parameter of OpenAI's API that a client may send; the ones an agent run cannot honour
are refused with 400 naming the parameter when given a non-default value (see `services.UNSUPPORTED_*`). Unknown
members are refused too (`forbid_unknown_fields`), as OpenAI does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

ModelId = Annotated[str, Meta(min_length=1, max_length=200, description="A model from GET /v1/models.")]
OpenAIMetadata = Annotated[
    dict[str, str],
    Meta(
        description=(
            "Up to 16 string pairs. `session_id` (chat completions): continue that session with the last user "
            "message only."
        )
    ),
]


class ChatCompletionRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/chat/completions`. System/developer messages become the system prompt, earlier turns the
    context, the last user message the prompt; with `metadata.session_id` that session goes on with the last
    user message only."""

    model: ModelId
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=10_000)]
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    metadata: OpenAIMetadata | None = None
    user: str | None = None
    store: bool | None = None
    n: int | None = None
    response_format: dict[str, Any] | None = None
    # Accepted only when absent or at their default (null, [], "none", "auto"); else 400 naming them.
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    temperature: Any = None
    top_p: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    stop: Any = None
    seed: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    reasoning_effort: Any = None
    service_tier: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None


class ResponseCreateRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/responses`: a response is a run (`id` = `resp_<run id hex>`)."""

    model: ModelId
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    stream: bool | None = None
    metadata: OpenAIMetadata | None = None
    store: bool | None = None
    user: str | None = None
    text: dict[str, Any] | None = None
    # Accepted only when absent or at their default; else 400 naming them.
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    temperature: Any = None
    top_p: Any = None
    max_output_tokens: Any = None
    max_tool_calls: Any = None
    reasoning: Any = None
    include: Any = None
    truncation: Any = None
    conversation: Any = None
    prompt: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    service_tier: Any = None
    stream_options: Any = None
    top_logprobs: Any = None
    context_management: Any = None


# -- models ----------------------------------------------------------------------------------------------


class Model(Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Struct):
    object: Literal["list"]
    data: list[Model]


# -- chat completions ------------------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int = 0


class CompletionTokensDetails(Struct):
    reasoning_tokens: int = 0


class CompletionUsage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatMessage(Struct, omit_defaults=False):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None


class ChatChoice(Struct, omit_defaults=False):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(Struct, omit_defaults=False):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: None = None
    metadata: dict[str, str] | UnsetType = UNSET


class ChunkDelta(Struct, omit_defaults=True):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET


class ChunkChoice(Struct, omit_defaults=False):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct, omit_defaults=True):
    """One `data:` item of a streamed chat completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | UnsetType | None = UNSET
    system_fingerprint: None = None


# -- responses -------------------------------------------------------------------------------------------


class OutputText(Struct, omit_defaults=False):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputMessage(Struct, omit_defaults=False):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class InputText(Struct):
    type: Literal["input_text"]
    text: str


class InputMessage(Struct):
    id: str
    type: Literal["message"]
    role: Literal["user", "system", "developer"]
    status: Literal["completed"]
    content: list[InputText]


class InputTokensDetails(Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(Struct):
    code: str
    message: str


class IncompleteDetails(Struct):
    reason: str


ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "incomplete", "cancelled"]


class ResponseObject(Struct, omit_defaults=False, kw_only=True):
    """A Responses API `response` (`id` = `resp_<run id hex>`)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    background: bool = False
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: None = None
    metadata: dict[str, str] = {}
    model: str
    output: list[OutputMessage] = []
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    store: bool = True
    temperature: None = None
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str = "none"
    tools: list[Any] = []
    top_p: None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: None = None
    session_id: str | None = None
    """Ours: the session the response's run belongs to (also the `X-Session-ID` header)."""


class ResponseEvent(Struct):
    """One event of a streamed response (`event:` = `type`; `data:` the JSON object with `sequence_number`)."""

    type: str
    sequence_number: int


class InputItemList(Struct):
    object: Literal["list"]
    data: list[InputMessage]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ResponseDeleted(Struct):
    id: str
    object: Literal["response"]
    deleted: bool
