"""Agent backends. They know nothing of HTTP, Litestar or the database: a backend turns an
`AgentRequest` into a stream of `AgentEvent`s and accepts interrupts, answers and permission changes."""

from app.agents.base import AgentBackend, AgentEvent, AgentRequest, AgentRequestError, AgentRun, AnswerOutcome
from app.agents.registry import get_backend

__all__ = (
    "AgentBackend",
    "AgentEvent",
    "AgentRequest",
    "AgentRequestError",
    "AgentRun",
    "AnswerOutcome",
    "get_backend",
)
