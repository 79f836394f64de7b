from __future__ import annotations

from typing import Any

from app.agents.base import AgentBackend
from app.agents.claude.config import ClaudeConfig


class BackendUnavailableError(RuntimeError):
    """The configured backend cannot start (missing extra or credentials)."""


def get_backend(
    name: str,
    *,
    anthropic_api_key: str = "",
    claude: ClaudeConfig | None = None,
    session_store: Any = None,
) -> AgentBackend:
    """`session_store` is an object satisfying the SDK's `SessionStore` protocol (the claude backend
    mirrors transcripts into it so any instance can resume any session)."""
    if name == "demo":
        from app.agents.demo import DemoBackend

        return DemoBackend()
    if name == "claude":
        try:
            import claude_agent_sdk  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                "AGENT_BACKEND=claude needs the 'claude' extra: uv sync --extra claude"
            ) from exc
        api_key = claude.api_key if claude is not None and claude.api_key else anthropic_api_key
        if not api_key:
            raise BackendUnavailableError("AGENT_BACKEND=claude needs ANTHROPIC_API_KEY")
        from dataclasses import replace

        from app.agents.claude.backend import ClaudeBackend

        config = replace(claude, api_key=api_key) if claude is not None else ClaudeConfig(api_key=api_key)
        return ClaudeBackend(config, session_store)
    raise BackendUnavailableError(f"unknown AGENT_BACKEND {name!r} (expected 'demo' or 'claude')")
