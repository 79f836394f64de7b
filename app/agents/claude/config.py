"""What the Claude backend needs from the operator. Plain data: importing this needs no SDK."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL_PATTERN = r"^(claude-[a-z0-9][a-z0-9.-]*|opus|sonnet|haiku|opusplan|default)(\[1m\])?$"


@dataclass(frozen=True)
class ClaudeConfig:
    api_key: str
    cli_path: str = ""
    """The Claude Code CLI to run; empty = the one bundled with the SDK."""
    cwd: str = ""
    """The agent's working directory; empty = this process's. Transcripts are keyed by it: keep it the
    same absolute path on every instance so any instance can resume any session."""
    config_dir: str = ""
    """CLAUDE_CONFIG_DIR for the CLI (its local transcripts and state); empty = the CLI's default."""
    models: tuple[str, ...] = ()
    """Allowed model names; empty = any name matching `model_pattern`."""
    model_pattern: str = DEFAULT_MODEL_PATTERN
    extra_tools: tuple[str, ...] = ()
    """Tool names accepted in allowed/disallowed_tools besides the CLI's built-in ones and `mcp__*`."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the CLI process."""
