"""Tool-permission requests from the CLI (`can_use_tool`) become `question` events answered via /answer.

Two kinds, told apart by `kind`:

- `ask_user_question`: the agent called `AskUserQuestion`. One `question` event per question it asked:
  `{question_id, question, options: [label...], kind, header, multi_select, option_details, tool_use_id}`.
  The answer text is handed to the agent as that question's answer (the tool's `answers`).
- `permission`: a tool needs approval (e.g. `Bash` in `default` mode):
  `{question_id, question, options: ["allow", "deny"], kind, tool_name, tool_input, tool_use_id, ...}`.
  Answering `allow` (or yes/y/approve) lets the tool run; `deny` refuses it; any other text refuses it and
  is handed to the agent as the reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny, ToolPermissionContext
from claude_agent_sdk.types import PermissionResult

from app.agents.base import AgentEvent, AnswerOutcome

ALLOW_ANSWERS = frozenset({"allow", "yes", "y", "approve", "approved", "ok"})
DENY_ANSWERS = frozenset({"deny", "no", "n", "reject"})


class QuestionClosedError(Exception):
    """The run was interrupted or closed while a question was pending."""


class Questions:
    def __init__(self, emit: Callable[[AgentEvent], None]) -> None:
        self._emit = emit
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._closed = False

    def answer(self, answer: str, question_id: str | None) -> AnswerOutcome:
        if question_id is None:
            waiting = [qid for qid, fut in self._pending.items() if not fut.done()]
            if not waiting:
                return "no_pending_question"
            question_id = waiting[0]
        future = self._pending.get(question_id)
        if future is None or future.done():
            return "no_pending_question"
        future.set_result(answer)
        return "delivered"

    def close(self) -> None:
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(QuestionClosedError())

    async def ask(self, data: dict[str, Any]) -> str:
        if self._closed:
            raise QuestionClosedError()
        question_id = str(uuid.uuid4())
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # Pending before the event goes out, so an answer can never arrive too early.
        self._pending[question_id] = future
        self._emit(AgentEvent("question", {"question_id": question_id, **data}))
        try:
            return await future
        finally:
            self._pending.pop(question_id, None)

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        try:
            if tool_name == "AskUserQuestion":
                return await self._ask_user(tool_input, context)
            return await self._approve(tool_name, tool_input, context)
        except QuestionClosedError:
            return PermissionResultDeny(message="The run was interrupted.", interrupt=True)

    async def _ask_user(self, tool_input: dict[str, Any], context: ToolPermissionContext) -> PermissionResult:
        answers: dict[str, str] = {}
        for item in tool_input.get("questions") or []:
            text = str(item.get("question", ""))
            options = [o for o in item.get("options") or [] if isinstance(o, dict)]
            answers[text] = await self.ask(
                {
                    "question": text,
                    "options": [str(o.get("label", "")) for o in options] or None,
                    "kind": "ask_user_question",
                    "header": item.get("header"),
                    "multi_select": bool(item.get("multiSelect", False)),
                    "option_details": options,
                    "tool_use_id": context.tool_use_id,
                }
            )
        return PermissionResultAllow(updated_input={**tool_input, "answers": answers})

    async def _approve(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        shown = context.display_name or tool_name
        question = f"Allow {shown} to run?"
        if context.description:
            question = f"{question} {context.description}"
        answer = await self.ask(
            {
                "question": question,
                "options": ["allow", "deny"],
                "kind": "permission",
                "tool_name": tool_name,
                "tool_input": tool_input,
                "tool_use_id": context.tool_use_id,
                "title": context.title,
                "description": context.description,
                "decision_reason": context.decision_reason,
                "blocked_path": context.blocked_path,
            }
        )
        normalized = answer.strip().lower()
        if normalized in ALLOW_ANSWERS:
            return PermissionResultAllow()
        if normalized in DENY_ANSWERS:
            return PermissionResultDeny(message="The user denied this tool use.")
        return PermissionResultDeny(message=f"The user denied this tool use: {answer}")
