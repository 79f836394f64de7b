from __future__ import annotations

from app.agents.base import AgentBackend


class BackendUnavailableError(RuntimeError):
    """The configured backend cannot start (missing extra or credentials)."""


def get_backend(name: str, *, anthropic_api_key: str = "") -> AgentBackend:
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
        if not anthropic_api_key:
            raise BackendUnavailableError("AGENT_BACKEND=claude needs ANTHROPIC_API_KEY")
        raise BackendUnavailableError("the claude backend is not implemented yet")
    raise BackendUnavailableError(f"unknown AGENT_BACKEND {name!r} (expected 'demo' or 'claude')")
