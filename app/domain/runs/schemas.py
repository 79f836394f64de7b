"""Wire shapes of runs: query bodies, control answers and the single-shot result."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from msgspec import UNSET, Meta, Struct, UnsetType

from app.domain.sessions.schemas import NO_NUL, ModelName, PermissionMode, Usage, check_json_value

MAX_PROMPT_CHARS = 100_000

# No U+0000 (Postgres text and jsonb refuse it; a prompt becomes the new session's title and events).
Prompt = Annotated[
    str, Meta(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL, description="At most 100,000 characters.")
]
ToolName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.*:()\- ]+$")]
ToolList = Annotated[list[ToolName], Meta(max_length=200)]


class RunError(Struct):
    code: str
    message: str


IfBusy = Literal["reject", "enqueue", "interrupt"]
RunStatus = Literal["queued", "running", "completed", "interrupted", "error", "cancelled"]
IF_BUSY_DESCRIPTION = (
    "What to do when the session already has an active run: `reject` (409 SESSION_BUSY), `enqueue` (wait in "
    "the session's queue) or `interrupt` (interrupt it and run next, ahead of queued runs)."
)


class RunOptions(Struct, forbid_unknown_fields=True, kw_only=True):
    """What the agent is asked to do; stored on the run as its `input`, as given: a member the client left out
    stays out (UNSET), one it sent (even `null` or `false`) is kept."""

    prompt: Prompt
    model: ModelName | UnsetType | None = UNSET
    permission_mode: PermissionMode | UnsetType | None = UNSET
    allowed_tools: ToolList | UnsetType | None = UNSET
    disallowed_tools: ToolList | UnsetType | None = UNSET
    max_turns: Annotated[int, Meta(ge=1, le=1000)] | UnsetType | None = UNSET
    system_prompt: Annotated[str, Meta(max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)] | UnsetType | None = UNSET
    output_format: dict[str, Any] | UnsetType | None = UNSET
    include_partial_messages: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.output_format, dict):
            check_json_value(self.output_format, "output_format")


class RunRequest(RunOptions, forbid_unknown_fields=True, kw_only=True):
    """`POST /sessions/{id}/runs` and `POST /sessions/{id}/resume`: run options plus `if_busy`."""

    if_busy: Annotated[IfBusy, Meta(description=IF_BUSY_DESCRIPTION)] = "reject"

    def options(self) -> RunOptions:
        """The run's own options (`input`), without how it was asked for."""
        fields = {f: getattr(self, f) for f in RunOptions.__struct_fields__}
        return RunOptions(**fields)


class QueryRequest(RunRequest, forbid_unknown_fields=True, kw_only=True):
    """Runs the agent; without `session_id` a new session is created."""

    session_id: UUID | None = None


class Run(Struct, omit_defaults=False):
    """One run of a session, however it was started."""

    id: UUID
    session_id: UUID
    status: RunStatus
    input: dict[str, Any]
    if_busy: IfBusy
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    instance_id: str | None
    queue_position: int | None
    result: dict[str, Any] | None
    error: RunError | None

    @property
    def ended(self) -> bool:
        return self.status not in ("queued", "running")


class RunPage(Struct):
    items: list[Run]
    total: int
    limit: int
    offset: int


class InterruptAccepted(Struct):
    status: Literal["interrupting"]
    run_id: UUID


class AnswerRequest(Struct, forbid_unknown_fields=True):
    answer: Annotated[str, Meta(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)]
    question_id: str | None = None


class AnswerDelivered(Struct):
    status: Literal["delivered"]


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
