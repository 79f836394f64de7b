"""Wire shapes of runs: query bodies, control answers and the single-shot result."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from msgspec import Meta, Struct

from app.domain.sessions.schemas import NO_NUL, ModelName, PermissionMode, Usage

MAX_PROMPT_CHARS = 100_000

# No U+0000 (Postgres text and jsonb refuse it; a prompt becomes the new session's title and events).
Prompt = Annotated[
    str, Meta(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL, description="At most 100,000 characters.")
]
ToolName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.*:()\- ]+$")]
ToolList = Annotated[list[ToolName], Meta(max_length=200)]


class RunOptions(Struct, forbid_unknown_fields=True, kw_only=True):
    prompt: Prompt
    model: ModelName | None = None
    permission_mode: PermissionMode | None = None
    allowed_tools: ToolList | None = None
    disallowed_tools: ToolList | None = None
    max_turns: Annotated[int, Meta(ge=1, le=1000)] | None = None
    system_prompt: Annotated[str, Meta(max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)] | None = None
    output_format: dict[str, Any] | None = None
    include_partial_messages: bool = False


class QueryRequest(RunOptions, forbid_unknown_fields=True, kw_only=True):
    """Runs the agent; without `session_id` a new session is created."""

    session_id: UUID | None = None


class ResumeRequest(RunOptions, forbid_unknown_fields=True, kw_only=True):
    """`POST /sessions/{id}/resume`: the query body without `session_id`."""


class InterruptAccepted(Struct):
    status: Literal["interrupting"]
    run_id: UUID


class AnswerRequest(Struct, forbid_unknown_fields=True):
    answer: Annotated[str, Meta(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)]
    question_id: str | None = None


class AnswerDelivered(Struct):
    status: Literal["delivered"]


class RunError(Struct):
    code: str
    message: str


class QueryResult(Struct, omit_defaults=False):
    """The `result` event's payload; a failed run has `is_error: true` and `error`."""

    session_id: UUID
    run_id: UUID
    is_error: bool
    num_turns: int
    duration_ms: int
    total_cost_usd: float
    usage: Usage
    result: str | None
    structured_output: Any
    stop_reason: str | None
    error: RunError | None = None
