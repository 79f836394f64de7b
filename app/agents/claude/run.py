"""One run = one `ClaudeSDKClient` in its own long-lived task.

The client is connected, used and disconnected by that task only; the rest of the service talks to it
through two queues: commands in (interrupt, permission mode, close) and events out. Disconnecting ends the
CLI process: the task never gets cancelled while it disconnects, so no CLI process outlives its run."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator
from typing import Literal, cast

from claude_agent_sdk import CanUseToolShadowedWarning, ClaudeSDKClient, MirrorErrorMessage
from claude_agent_sdk.types import PermissionMode, SessionStore

from app.agents.base import AgentEvent, AgentRequest, AnswerOutcome
from app.agents.claude.config import ClaudeConfig
from app.agents.claude.events import MappingState, interrupted_result, to_events
from app.agents.claude.options import build_options
from app.agents.claude.questions import Questions
from app.lib.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# `can_use_tool` is always set (it carries AskUserQuestion and approvals); the SDK warns when allow rules
# shadow it, which is what the caller asked for.
warnings.filterwarnings("ignore", category=CanUseToolShadowedWarning)

CommandKind = Literal["interrupt", "permission_mode", "close"]
CLOSE_TIMEOUT = 30.0

_END = object()


class ClaudeRun:
    interrupt_grace = 5.0
    """After an interrupt the CLI acknowledges at once and reports a final result; keep reading that long."""

    def __init__(self, request: AgentRequest, config: ClaudeConfig, store: SessionStore | None) -> None:
        self.request = request
        self.config = config
        self.store = store
        self._out: asyncio.Queue[object] = asyncio.Queue()
        self._commands: asyncio.Queue[tuple[CommandKind, str | None]] = asyncio.Queue()
        self._questions = Questions(self._out.put_nowait)
        self._state = MappingState()
        self._task: asyncio.Task[None] | None = None

    # -- control (any task) ------------------------------------------------------------------------------

    async def interrupt(self) -> None:
        self._state.interrupted = True
        self._questions.close()
        self._commands.put_nowait(("interrupt", None))

    async def set_permission_mode(self, mode: str) -> None:
        self._commands.put_nowait(("permission_mode", mode))

    async def answer(self, answer: str, question_id: str | None) -> AnswerOutcome:
        return self._questions.answer(answer, question_id)

    async def aclose(self) -> None:
        task = self._task
        if task is None:
            return
        self._questions.close()
        self._commands.put_nowait(("close", None))
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if not done:  # pragma: no cover - the CLI ignored every request to stop
            logger.error("claude run %s did not close in %ss; cancelling it", self.request.run_id, CLOSE_TIMEOUT)
            await cancel_and_wait(task)

    # -- events (the consumer's task) ------------------------------------------------------------------

    async def events(self) -> AsyncIterator[AgentEvent]:
        if self._task is None:
            self._task = asyncio.create_task(self._main(), name=f"claude-{self.request.run_id}")
        while True:
            item = await self._out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, AgentEvent)
            yield item

    # -- the client's own task -------------------------------------------------------------------------

    async def _main(self) -> None:
        try:
            if self._state.interrupted:
                return
            options = build_options(
                self.request, self.config, can_use_tool=self._questions.can_use_tool, session_store=self.store
            )
            client = ClaudeSDKClient(options)
            await client.connect()
            try:
                if not self._state.interrupted:
                    await client.query(self.request.prompt)
                    await self._serve(client)
            finally:
                await client.disconnect()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which reports it as an `error` event
            self._out.put_nowait(exc)
        finally:
            if self._state.interrupted and not self._state.saw_result:
                self._out.put_nowait(interrupted_result())
            self._out.put_nowait(_END)

    async def _serve(self, client: ClaudeSDKClient) -> None:
        """Reads the client's messages until its result, while carrying out commands as they come."""
        reader = asyncio.create_task(self._read(client))
        try:
            while not reader.done():
                command = asyncio.create_task(self._commands.get())
                done, _ = await asyncio.wait({reader, command}, return_when=asyncio.FIRST_COMPLETED)
                if command not in done:
                    command.cancel()
                    break
                kind, value = command.result()
                if kind == "close":
                    return
                try:
                    if kind == "interrupt":
                        await client.interrupt()
                    elif kind == "permission_mode" and value is not None:
                        await client.set_permission_mode(cast(PermissionMode, value))
                except Exception:
                    logger.warning("claude run %s: %s failed", self.request.run_id, kind, exc_info=True)
            reader.result()
        finally:
            await cancel_and_wait(reader)

    async def _read(self, client: ClaudeSDKClient) -> None:
        async for message in client.receive_response():
            if isinstance(message, MirrorErrorMessage):
                logger.warning("claude run %s: transcript mirror failed: %s", self.request.run_id, message.error)
            for event in to_events(message, self._state):
                self._out.put_nowait(event)
