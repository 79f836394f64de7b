from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

AnswerOutcome = Literal["delivered", "no_pending_question"]


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event of a run: `event` is an SSE event name of SPEC §3, `data` its JSON payload."""

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


class AgentRun(Protocol):
    """A started run. `events()` is consumed once; it ends after `result` (or `error`)."""

    def events(self) -> AsyncIterator[AgentEvent]: ...

    async def interrupt(self) -> None: ...

    async def answer(self, answer: str, question_id: str | None) -> AnswerOutcome: ...

    async def set_permission_mode(self, mode: str) -> None: ...

    async def aclose(self) -> None: ...


class AgentBackend(Protocol):
    name: str

    def start(self, request: AgentRequest) -> AgentRun: ...

    async def aclose(self) -> None: ...
