"""SDK messages → our SSE events. Every message the SDK reports becomes an event:

- `SystemMessage` init → `init` (the SDK's session id rides along as `agent_session_id`, kept server-side);
- `AssistantMessage` / `UserMessage` → `message` with text, thinking, tool_use, tool_result (and server tool)
  blocks;
- every other system message, rate-limit and conversation-reset notice → `message` with `role: "system"`,
  its `subtype` and the SDK's `data`, and no content blocks;
- `StreamEvent` → `partial` (only sent with `include_partial_messages`);
- `ResultMessage` → `result` with usage, cost, durations and structured output; a failed result is followed
  by `error` (code `AGENT_ERROR`).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ConversationResetMessage,
    RateLimitEvent,
    ResultMessage,
    ServerToolResultBlock,
    ServerToolUseBlock,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import ContentBlock, Message

from app.agents.base import AgentEvent

# Init fields that describe this server's filesystem, not the agent: not sent to clients.
PRIVATE_INIT_FIELDS = frozenset(
    {
        "type",
        "subtype",
        "session_id",
        "uuid",
        "cwd",
        "original_cwd",
        "memory_paths",
        "messaging_socket_path",
        "additional_directories",
    }
)


@dataclass
class MappingState:
    interrupted: bool = False
    saw_result: bool = False


def block_to_dict(block: ContentBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ThinkingBlock):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    if isinstance(block, ToolResultBlock):
        return {
            "type": "tool_result",
            "tool_use_id": block.tool_use_id,
            "content": block.content,
            "is_error": bool(block.is_error),
        }
    if isinstance(block, ServerToolUseBlock):
        return {"type": "server_tool_use", "id": block.id, "name": block.name, "input": block.input}
    if isinstance(block, ServerToolResultBlock):
        return {"type": "server_tool_result", "tool_use_id": block.tool_use_id, "content": block.content}
    return {"type": "unknown", "data": asdict(block)}


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _system(subtype: str, data: dict[str, Any], message_uuid: str | None = None) -> AgentEvent:
    payload = {k: v for k, v in data.items() if k not in ("type", "subtype", "session_id")}
    return AgentEvent(
        "message",
        {
            "role": "system",
            "subtype": subtype,
            "content": [],
            "data": payload,
            "uuid": message_uuid or str(data.get("uuid") or uuid.uuid4()),
        },
    )


def init_event(message: SystemMessage) -> AgentEvent:
    data = message.data
    return AgentEvent(
        "init",
        {
            "agent_session_id": data.get("session_id"),
            "model": data.get("model"),
            "permission_mode": data.get("permissionMode"),
            "tools": list(data.get("tools") or []),
            "agent": {k: v for k, v in data.items() if k not in PRIVATE_INIT_FIELDS},
        },
    )


def result_events(message: ResultMessage, state: MappingState) -> list[AgentEvent]:
    raw_usage = dict(message.usage or {})
    usage = {
        **raw_usage,
        "input_tokens": int(raw_usage.get("input_tokens") or 0),
        "output_tokens": int(raw_usage.get("output_tokens") or 0),
    }
    interrupted = state.interrupted
    is_error = bool(message.is_error) and not interrupted
    result = {
        "is_error": is_error,
        "num_turns": message.num_turns,
        "total_cost_usd": float(message.total_cost_usd or 0.0),
        "usage": usage,
        "result": message.result,
        "structured_output": message.structured_output,
        "stop_reason": "interrupted" if interrupted else message.stop_reason,
        # What the SDK reports beyond our documented fields, kept as it is:
        "subtype": message.subtype,
        "agent_duration_ms": message.duration_ms,
        "duration_api_ms": message.duration_api_ms,
        "model_usage": message.model_usage,
        "permission_denials": message.permission_denials,
        "errors": message.errors,
        "api_error_status": message.api_error_status,
        "terminal_reason": message.terminal_reason,
        "deferred_tool_use": asdict(message.deferred_tool_use) if message.deferred_tool_use else None,
        "uuid": message.uuid,
    }
    events = [AgentEvent("result", result)]
    if is_error:
        detail = "; ".join(message.errors or []) or message.result or message.subtype
        events.append(
            AgentEvent(
                "error",
                _without_none(
                    {
                        "code": "AGENT_ERROR",
                        "message": detail,
                        "subtype": message.subtype,
                        "api_error_status": message.api_error_status,
                    }
                ),
            )
        )
    return events


def partial_event(message: StreamEvent) -> AgentEvent:
    raw = message.event
    data: dict[str, Any] = {
        "type": raw.get("type"),
        "event": raw,
        "uuid": message.uuid,
        "parent_tool_use_id": message.parent_tool_use_id,
    }
    delta = raw.get("delta") if isinstance(raw.get("delta"), dict) else None
    if delta is not None and delta.get("type") == "text_delta":
        data["index"] = raw.get("index")
        data["text"] = delta.get("text", "")
    return AgentEvent("partial", data)


def to_events(message: Message, state: MappingState) -> list[AgentEvent]:
    if isinstance(message, AssistantMessage):
        return [
            AgentEvent(
                "message",
                _without_none(
                    {
                        "role": "assistant",
                        "content": [block_to_dict(b) for b in message.content],
                        "model": message.model,
                        "usage": message.usage,
                        "uuid": message.uuid or str(uuid.uuid4()),
                        "message_id": message.message_id,
                        "stop_reason": message.stop_reason,
                        "parent_tool_use_id": message.parent_tool_use_id,
                        "error": message.error,
                    }
                ),
            )
        ]
    if isinstance(message, UserMessage):
        content = message.content
        blocks = (
            [{"type": "text", "text": content}] if isinstance(content, str) else [block_to_dict(b) for b in content]
        )
        return [
            AgentEvent(
                "message",
                _without_none(
                    {
                        "role": "user",
                        "content": blocks,
                        "uuid": message.uuid or str(uuid.uuid4()),
                        "parent_tool_use_id": message.parent_tool_use_id,
                        "tool_use_result": message.tool_use_result,
                    }
                ),
            )
        ]
    if isinstance(message, ResultMessage):
        state.saw_result = True
        return result_events(message, state)
    if isinstance(message, StreamEvent):
        return [partial_event(message)]
    if isinstance(message, SystemMessage):
        if message.subtype == "init":
            return [init_event(message)]
        return [_system(message.subtype, message.data)]
    if isinstance(message, RateLimitEvent):
        return [_system("rate_limit", message.rate_limit_info.raw, message.uuid)]
    if isinstance(message, ConversationResetMessage):
        return [_system("conversation_reset", {"new_conversation_id": message.new_conversation_id}, message.uuid)]
    return [_system("unknown", {"repr": repr(message)})]


def interrupted_result() -> AgentEvent:
    """The run was interrupted before the CLI could report a result of its own."""
    return AgentEvent(
        "result",
        {
            "is_error": False,
            "num_turns": 0,
            "total_cost_usd": 0.0,
            "usage": {"input_tokens": 0, "output_tokens": 0},
            "result": None,
            "structured_output": None,
            "stop_reason": "interrupted",
        },
    )
