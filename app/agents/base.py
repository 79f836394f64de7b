from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

AnswerOutcome = Literal["delivered", "no_pending_question"]


class AgentRequestError(ValueError):
    """The backend cannot run this request (unknown model or tool, bad option); the API answers 422."""


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event of a run: `event` is one of the API's SSE event names (`init`,
    `message`, `tool_use`, ...), `data` its JSON payload."""

    event: str
    data: dict[str, Any]


@dataclass(frozen=True)
class AgentRequest:
    session_id: str
    run_id: str
    prompt: str
    model: str | None = None
    permission_mode: str | None = None
    allowed_tools: list[str] = field(default_factory=list)
    disallowed_tools: list[str] = field(default_factory=list)
    max_turns: int | None = None
    system_prompt: str | None = None
    output_format: dict[str, Any] | None = None
    include_partial_messages: bool = False
    resume: str | None = None
    """The backend's own session id from an earlier run, to continue its conversation."""
    fork: bool = False
    """With `resume`: continue from that conversation under a new backend session id (a forked session's
    first run); the new id comes back in `init` as `agent_session_id`."""


class AgentRun(Protocol):
    """A started run. `events()` is consumed once; it ends after `result` (or `error`).

    `interrupt_grace`: seconds the caller keeps reading `events()` after `interrupt()` so the backend can
    report how the run ended (0: the caller stops reading at once)."""

    interrupt_grace: float

    def events(self) -> AsyncIterator[AgentEvent]: ...

    async def interrupt(self) -> None: ...

    async def answer(self, answer: str, question_id: str | None) -> AnswerOutcome: ...

    async def set_permission_mode(self, mode: str) -> None: ...

    async def aclose(self) -> None: ...


class AgentBackend(Protocol):
    name: str

    def validate(self, request: AgentRequest) -> None:
        """Raises `AgentRequestError` when the request cannot run; called before a run takes its lease."""
        ...

    def start(self, request: AgentRequest) -> AgentRun: ...

    async def aclose(self) -> None: ...
