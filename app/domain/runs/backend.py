"""Builds the configured agent backend; the claude backend gets the Postgres transcript store."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

from app.agents import get_backend
from app.agents.base import AgentBackend
from app.agents.claude.config import ClaudeConfig
from app.config.settings import Settings
from app.domain.transcripts.store import PostgresSessionStore


def claude_config(settings: Settings) -> ClaudeConfig:
    claude = settings.claude
    return ClaudeConfig(
        api_key=settings.app.anthropic_api_key,
        cli_path=claude.cli_path,
        cwd=claude.cwd,
        config_dir=claude.config_dir,
        models=claude.models,
        model_pattern=claude.model_pattern,
        extra_tools=claude.extra_tools,
    )


def build_backend(settings: Settings, alchemy: SQLAlchemyAsyncConfig) -> AgentBackend:
    """Raises `BackendUnavailableError` (a clear startup error) when the backend cannot run here."""
    name = settings.app.agent_backend
    if name != "claude":
        return get_backend(name, anthropic_api_key=settings.app.anthropic_api_key)
    return get_backend(
        name,
        anthropic_api_key=settings.app.anthropic_api_key,
        claude=claude_config(settings),
        session_store=PostgresSessionStore(alchemy),
    )
