"""`AgentRequest` (a run's options) → `ClaudeAgentOptions`."""

from __future__ import annotations

from typing import Any, cast

from claude_agent_sdk import ClaudeAgentOptions
from claude_agent_sdk.types import CanUseTool, PermissionMode, SessionStore

from app.agents.base import AgentRequest
from app.agents.claude.config import ClaudeConfig


def build_options(
    request: AgentRequest,
    config: ClaudeConfig,
    *,
    can_use_tool: CanUseTool,
    session_store: SessionStore | None,
) -> ClaudeAgentOptions:
    env = {**config.env, "ANTHROPIC_API_KEY": config.api_key}
    if config.config_dir:
        env["CLAUDE_CONFIG_DIR"] = config.config_dir
    extra: dict[str, Any] = {}
    if request.resume:
        extra["resume"] = request.resume
        extra["fork_session"] = request.fork
    return ClaudeAgentOptions(
        model=request.model,
        permission_mode=cast(PermissionMode | None, request.permission_mode),
        allowed_tools=list(request.allowed_tools),
        disallowed_tools=list(request.disallowed_tools),
        max_turns=request.max_turns,
        # No system prompt of the caller's: Claude Code's own (the SDK would otherwise send an empty one).
        system_prompt=request.system_prompt
        if request.system_prompt is not None
        else {"type": "preset", "preset": "claude_code"},
        output_format=request.output_format,
        include_partial_messages=request.include_partial_messages,
        can_use_tool=can_use_tool,
        session_store=session_store,
        cli_path=config.cli_path or None,
        cwd=config.cwd or None,
        env=env,
        # The service never reads settings files: the request alone decides what the agent may do.
        setting_sources=[],
        **extra,
    )
