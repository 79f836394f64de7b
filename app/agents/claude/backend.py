"""The Claude backend: real agents through `claude-agent-sdk` (`ClaudeSDKClient`)."""

from __future__ import annotations

from claude_agent_sdk.types import SessionStore

from app.agents.base import AgentRequest
from app.agents.claude.config import ClaudeConfig
from app.agents.claude.run import ClaudeRun
from app.agents.claude.validation import validate_request


class ClaudeBackend:
    name = "claude"

    def __init__(self, config: ClaudeConfig, session_store: SessionStore | None = None) -> None:
        self.config = config
        self.session_store = session_store

    def validate(self, request: AgentRequest) -> None:
        validate_request(request, self.config)

    def start(self, request: AgentRequest) -> ClaudeRun:
        return ClaudeRun(request, self.config, self.session_store)

    async def aclose(self) -> None:
        return None
