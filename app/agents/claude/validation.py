"""Checks a request against what the Claude CLI accepts, before any run starts."""

from __future__ import annotations

import re

from app.agents.base import AgentRequest, AgentRequestError
from app.agents.claude.config import ClaudeConfig

# The Claude Code CLI's built-in tools (current and recent names). Rules like `Bash(git log:*)` name a tool
# before the parenthesis; MCP tools are `mcp__<server>__<tool>`.
BUILTIN_TOOLS = frozenset(
    {
        "Agent",
        "AskUserQuestion",
        "Bash",
        "BashOutput",
        "CronCreate",
        "CronDelete",
        "CronList",
        "Edit",
        "EnterPlanMode",
        "EnterWorktree",
        "ExitPlanMode",
        "ExitWorktree",
        "Glob",
        "Grep",
        "KillBash",
        "KillShell",
        "LS",
        "ListAgents",
        "ListMcpResources",
        "Monitor",
        "MultiEdit",
        "NotebookEdit",
        "NotebookRead",
        "Read",
        "ReadMcpResource",
        "ReportFindings",
        "ScheduleWakeup",
        "SendMessage",
        "Skill",
        "SlashCommand",
        "StructuredOutput",
        "Task",
        "TaskOutput",
        "TaskStop",
        "TodoWrite",
        "ToolSearch",
        "WebFetch",
        "WebSearch",
        "Workflow",
        "Write",
    }
)
PERMISSION_MODES = frozenset({"default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"})
_RULE = re.compile(r"^([A-Za-z0-9_\-]+)(\(.*\))?$")


def tool_name(rule: str) -> str | None:
    """The tool a permission rule names (`Bash(git:*)` → `Bash`), or None when it is malformed."""
    match = _RULE.match(rule.strip())
    return match.group(1) if match else None


def validate_request(request: AgentRequest, config: ClaudeConfig) -> None:
    model = request.model
    if model is not None:
        if config.models and model not in config.models:
            raise AgentRequestError(f"Unknown model {model!r}; this service accepts: {', '.join(config.models)}.")
        if not config.models and not re.match(config.model_pattern, model):
            raise AgentRequestError(f"Unknown model {model!r}: not a Claude model name.")
    if request.permission_mode is not None and request.permission_mode not in PERMISSION_MODES:
        raise AgentRequestError(f"Unknown permission_mode {request.permission_mode!r}.")
    known = BUILTIN_TOOLS | set(config.extra_tools)
    for field_name, rules in (("allowed_tools", request.allowed_tools), ("disallowed_tools", request.disallowed_tools)):
        for rule in rules:
            name = tool_name(rule)
            if name is None or (name not in known and not name.startswith("mcp__")):
                raise AgentRequestError(f"{field_name}: unknown tool {rule!r}.")
    output_format = request.output_format
    if output_format is not None and (
        output_format.get("type") != "json_schema" or not isinstance(output_format.get("schema"), dict)
    ):
        raise AgentRequestError('output_format must be {"type": "json_schema", "schema": {...}}.')
